"""Split a large image into overlapping tiles and blend results back without seams (pure numpy, no torch,
so the HTTP layer can count a request's tiles before it becomes a job).

Each tile's weight ramps linearly to a small floor across the overlap, so neighbouring tiles cross-fade;
weights are normalised by their sum, so any layout (edges, corners, single tile) blends to 1. A ``Canvas``
takes tiles one at a time as they finish, so a job never holds all its tiles at once.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # top, left, height, width


def _axis(length: int, tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """(size, starts) along one side: the fewest tiles of at most ``tile`` that cover ``length`` with at least
    ``overlap`` between neighbours, all of one size (a multiple of ``multiple``, as small as that allows) and
    spread evenly, so the overlap is shared out instead of piling up at the far edge."""
    if length <= tile:
        return length, [0]
    count = ceil_div(length - overlap, tile - overlap)
    size = ceil_div(length + (count - 1) * overlap, count)
    size = min(tile, round_up(size, multiple))
    # floor of an even spread: a step is at most ceil((length - size) / (count - 1)) <= size - overlap
    return size, [i * (length - size) // (count - 1) for i in range(count)]


def tile_boxes(height: int, width: int, *, tile: int, overlap: int, multiple: int = 1) -> list[Box]:
    """(top, left, h, w) boxes covering the image, every one of the same h x w (at most tile x tile)."""
    th, ys = _axis(height, tile, overlap, multiple)
    tw, xs = _axis(width, tile, overlap, multiple)
    return [(y, x, th, tw) for y in ys for x in xs]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(length: int, multiple: int) -> int:
    return ceil_div(length, multiple) * multiple


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return round_up(height, multiple), round_up(width, multiple)


def fit_tile(tile: int, multiple: int) -> int:
    """The tile edge rounded down to a multiple of the network's downsampling factor (at least one)."""
    return max(multiple, tile // multiple * multiple)


def linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """float32 points from ``start`` to ``end`` exactly as torch.linspace gives them on the CPU (a float32 step;
    the first half counted from the start, the second from the end, each point rounded once, as a fused
    multiply-add does), so the blend weights are bit for bit the ones the engine has always used."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    i = np.arange(steps, dtype=np.float64)
    low = np.float64(start32) + step * i
    high = np.float64(end32) - step * (steps - 1 - i)
    return np.where(i < steps // 2, low, high).astype(np.float32)


def blend_window(h: int, w: int, overlap: int) -> np.ndarray:
    """[h, w] float32 weights: 1 inside, ramping down over ``overlap`` pixels at each border (over half the
    side where the side is shorter than two overlaps: a tile that small still fades into its neighbours,
    instead of being averaged with them at full weight up to its edge, where a network is least sure)."""

    def ramp(n: int) -> np.ndarray:
        width = min(overlap, n // 2)
        if width <= 0:
            return np.ones(n, dtype=np.float32)
        edge = linspace32(0.05, 1.0, width)
        return np.concatenate([edge, np.ones(n - 2 * width, dtype=np.float32), edge[::-1]])

    return ramp(h)[:, None] * ramp(w)[None, :]


class Canvas:
    """A weighted sum of [C, h, w] tiles into a [C, height, width] image, one tile at a time."""

    def __init__(self, channels: int, height: int, width: int, overlap: int) -> None:
        self.overlap = overlap
        self._sum = np.zeros((channels, height, width), dtype=np.float32)
        self._weight = np.zeros((1, height, width), dtype=np.float32)

    def add(self, tile: np.ndarray, box: Box) -> None:
        y, x, h, w = box
        weight = blend_window(h, w, self.overlap)
        self._sum[:, y : y + h, x : x + w] += np.asarray(tile, dtype=np.float32) * weight
        self._weight[:, y : y + h, x : x + w] += weight

    def result(self) -> np.ndarray:
        return self._sum / self._weight


def blend(tiles: list[np.ndarray], boxes: list[Box], height: int, width: int, overlap: int) -> np.ndarray:
    """Weighted sum of [C, h, w] tiles into a [C, height, width] image."""
    canvas = Canvas(np.asarray(tiles[0]).shape[0], height, width, overlap)
    for tile, box in zip(tiles, boxes):
        canvas.add(tile, box)
    return canvas.result()


def pad_to_multiple(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad an [H, W, C] image on the bottom/right so both sides are multiples of ``multiple``
    (edge-replicate where the image is too small to reflect)."""
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, (h, w)
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode), (h, w)
