"""Pixel conventions shared by the engine, the training scripts and the benchmarks.

Networks see pixels in [-1, 1]: x = p / 127.5 - 1 for p in 0..255. Gaussian noise of std sigma on the
0-255 scale is therefore std 2 sigma / 255 here. Flips/rotations (``ENSEMBLE_ORDER`` in
``app.diffusion.layout``) are applied to a view and undone on its output.
"""

from __future__ import annotations

import numpy as np
import torch


def sigma_255_to_unit(sigma_255: float) -> float:
    return 2.0 * sigma_255 / 255.0


def from_uint8(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels (array or tensor, any layout) to float32 in [-1, 1], same layout."""
    return torch.as_tensor(pixels).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] to uint8 pixels, rounded and clipped, same layout."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """x rounded and clipped to the values a uint8 image can hold (as an upload arrives), still in [-1, 1]."""
    return ((x + 1.0) * 127.5).round().clamp(0, 255) / 127.5 - 1.0


def image_to_unit(pixels: np.ndarray) -> torch.Tensor:
    """An image's uint8 [H, W, C] pixels to float32 [C, H, W] in [-1, 1] (a copy: uploads are read-only)."""
    return from_uint8(np.array(pixels)).permute(2, 0, 1)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """An upload's [1 or 3, H, W] in [-1, 1] as a model of ``channels`` reads it: grey replicated for a colour
    model, colour averaged for a grey one, and an opaque alpha (1) after them for a model with alpha (2 or 4
    channels: an upload's own alpha is dropped when it is decoded, and its info says so)."""
    colour = channels - 1 if channels in (2, 4) else channels
    if x.shape[0] != colour:
        x = x.expand(colour, -1, -1) if x.shape[0] == 1 else x.mean(0, keepdim=True)
    return torch.cat([x, torch.ones_like(x[:1])]) if colour != channels else x


def unit_to_image(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[C, H, W] in [-1, 1] to an image's uint8 [H, W, C] pixels."""
    return to_uint8(torch.as_tensor(x).cpu()).permute(1, 2, 0).numpy()


def apply_transform(x: torch.Tensor, transform: tuple[int, bool]) -> torch.Tensor:
    turns, mirrored = transform
    x = torch.rot90(x, turns, dims=(-2, -1))
    return x.flip(-1) if mirrored else x


def invert_transform(x: torch.Tensor, transform: tuple[int, bool]) -> torch.Tensor:
    turns, mirrored = transform
    x = x.flip(-1) if mirrored else x
    return torch.rot90(x, -turns, dims=(-2, -1))
