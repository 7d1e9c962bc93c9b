"""What the training scripts share: device and autocast choice, the learning-rate curve, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; plain float32 on the CPU (bf16 is slower there, not faster)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def lr_at(step: int, *, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 10% of it at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Checkpoints:
    """One rolling ``latest.pt`` per run folder, replaced atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.latest = self.folder / "latest.pt"

    def load(self, device: torch.device) -> dict | None:
        if not self.latest.exists():
            return None
        return torch.load(self.latest, map_location=device, weights_only=True)

    def save(self, state: dict) -> None:
        tmp = self.folder / "tmp.pt"
        torch.save(state, tmp)
        tmp.replace(self.latest)
