"""Pick the device and the network precision from settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


@lru_cache
def _cpuinfo() -> str:
    """Linux's /proc/cpuinfo, read once ("" elsewhere)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name as Linux reports it ("" where it does not), for records of runs and benches."""
    lines = _cpuinfo().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it bf16 is slower than float32."""
    flags = _cpuinfo().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DIFFUSION_DEVICE=cuda but no CUDA device is available")
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the network, or None for plain float32.

    bfloat16 by default on CUDA and on a CPU that computes it natively (AVX512-BF16 or AMX): it keeps
    float32's range, so the UNet's activations cannot overflow as they can in float16, and on such a CPU it
    halves the photo denoiser's time for 0.01 dB (bench/bench_denoise_speed.py); sampler arithmetic stays
    in float32 either way. Other CPUs run float32 (bf16 emulated is slower). float16 needs CUDA.
    """
    if choice == "float32":
        return None
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if choice == "float16" and device.type != "cuda":
        raise RuntimeError("DIFFUSION_DTYPE=float16 needs a CUDA device")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[choice]
