"""Split a large image into overlapping tiles and blend results back without seams (pure functions).

Each tile's weight ramps linearly to a small floor across the overlap, so neighbouring tiles cross-fade;
weights are normalised by their sum, so any layout (edges, corners, single tile) blends to 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def tile_boxes(height: int, width: int, *, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) boxes covering the image; every box is tile x tile unless the image is smaller."""
    th, tw = min(tile, height), min(tile, width)
    return [(y, x, th, tw) for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


def blend_window(h: int, w: int, overlap: int) -> torch.Tensor:
    """[h, w] weights: 1 inside, ramping down over ``overlap`` pixels at each border."""

    def ramp(n: int) -> torch.Tensor:
        if overlap <= 0 or n <= 2 * overlap:
            return torch.ones(n)
        edge = torch.linspace(0.05, 1.0, overlap)
        return torch.cat([edge, torch.ones(n - 2 * overlap), edge.flip(0)])

    return ramp(h)[:, None] * ramp(w)[None, :]


def blend(tiles: list[torch.Tensor], boxes: list[tuple[int, int, int, int]], height: int, width: int, overlap: int) -> torch.Tensor:
    """Weighted sum of [C, h, w] tiles into a [C, height, width] image."""
    channels = tiles[0].shape[0]
    out = torch.zeros(channels, height, width, dtype=torch.float32)
    total = torch.zeros(1, height, width, dtype=torch.float32)
    for tile, (y, x, h, w) in zip(tiles, boxes):
        weight = blend_window(h, w, overlap)
        out[:, y : y + h, x : x + w] += tile.float().cpu() * weight
        total[:, y : y + h, x : x + w] += weight
    return out / total


def pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad a [C, H, W] image on the bottom/right so both sides are multiples of ``multiple``."""
    _, h, w = image.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(image[None], (0, pw, 0, ph), mode=mode)[0], (h, w)
