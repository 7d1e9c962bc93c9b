"""Pick the device and the network precision from settings."""

from __future__ import annotations

import torch


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DIFFUSION_DEVICE=cuda but no CUDA device is available")
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the network, or None for plain float32.

    bfloat16 on CUDA by default: it keeps float32's range, so the UNet's activations cannot overflow
    as they can in float16; sampler arithmetic stays in float32 either way. CPU runs float32.
    """
    if choice == "float32" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cuda":
        raise RuntimeError(f"DIFFUSION_DTYPE={choice} needs a CUDA device")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[choice]
