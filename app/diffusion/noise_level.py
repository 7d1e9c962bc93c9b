"""Estimate the std of additive white Gaussian noise in an image (for ``sigma: "auto"``).

Donoho & Johnstone 1994: in the finest diagonal wavelet band (Haar HH) of a natural image, almost all
energy is noise, and the median absolute value is robust to the few edges: sigma = median(|HH|) / 0.6745.

An upload is clipped to [0, 255], and clipping removes noise where the image is dark or bright: at sigma
50 and 75 that estimate read 6 and 14 too low on the held-out photos. So when pixels sit at the bounds,
the estimate is matched by simulation instead: for a candidate sigma, each pixel's clean value is what the
local mean of the upload implies once clipping is undone (the mean of a clipped Gaussian inverted), fresh
noise at that sigma is added and clipped the same way, and the same HH statistic is taken; the sigma whose
simulated statistic equals the upload's is the estimate (bisection; the statistic grows with sigma).

Fine texture leaks into HH too and made the estimate read high at low sigma (about +1 at sigma 5-15 on
the held-out photos). So the statistic is taken over the flattest half of the 2x2 blocks only, judged by
the gradients of the blocks' means (the Haar LL band). The orthonormal Haar transform keeps the noise in
LL independent of the noise in HH, so choosing blocks by LL does not bias the noise that HH measures; the
simulation uses the same blocks. Above sigma 45 the texture matters little, while the flattest blocks
lean to the clipped areas, where the simulation's guess of the clean value is poorest (the estimate read
+1.5 to +2 high at sigma 60-75): there all blocks are used, as before.
"""

from __future__ import annotations

import math

import torch

CLIPPED_FRACTION = 1e-3  # below this share of pixels at the bounds, the plain estimate stands
LOCAL_MEAN = 7  # window of the local mean that stands for the clean value
MAX_BLOCKS = 16384  # 2x2 blocks per channel the simulation looks at (a seeded random subset beyond)
PLAIN_BLOCKS = 262144  # flat 2x2 blocks per channel the plain statistic is taken on (a seeded subset beyond)
BISECTIONS = 16
FLAT_FRACTION = 0.5  # the share of 2x2 blocks, the flattest by their LL gradients, the statistic is taken on
ALL_BLOCKS_ABOVE = 45.0  # above this estimate (0-255 scale) all blocks are used (see the module doc)
MAX_PIXELS = 1 << 21  # a larger upload is estimated on evenly spaced crops of it, this many pixels in all
CROP = 256  # the crops' side (even: the 2x2 blocks stay whole)


def _sampled(image: torch.Tensor) -> torch.Tensor:
    """The image, or past MAX_PIXELS a mosaic of evenly spaced CROP x CROP crops of it, MAX_PIXELS at most,
    in their places' order: the estimate runs on the engine's thread, and a 16-megapixel upload took seconds
    there while other jobs waited. Two million pixels leave the median of the noise well measured; the held-out
    photos (docs/denoising.md) are all below MAX_PIXELS, so their figures are unchanged."""
    _, height, width = image.shape
    if height * width <= MAX_PIXELS:
        return image
    tall, wide = min(CROP, height // 2 * 2), min(CROP, width // 2 * 2)
    count = MAX_PIXELS // (tall * wide)
    across = max(1, min(width // wide, round(math.sqrt(count * width / height))))
    down = max(1, min(height // tall, count // across))

    def starts(size: int, crop: int, n: int) -> list[int]:
        return [round(i * (size - crop) / max(1, n - 1)) // 2 * 2 for i in range(n)]

    rows = [
        torch.cat([image[:, top : top + tall, left : left + wide] for left in starts(width, wide, across)], dim=2)
        for top in starts(height, tall, down)
    ]
    return torch.cat(rows, dim=1)


def _corners(x: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The four pixels of each 2x2 block of a [C, H, W] image (H and W even), four [C, n] tensors: strided
    views of the image (no copy), or with ``keep`` only those blocks (flat indices)."""
    corners = [x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]]
    return [c.flatten(1) if keep is None else c.flatten(1)[:, keep] for c in corners]


def _blocks(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[C, 4, n] the same, stacked, float64 (for the simulation)."""
    return torch.stack(_corners(x, keep), 1).double()


def _subset(count: int, limit: int, generator: torch.Generator) -> torch.Tensor | None:
    """A seeded random ``limit`` of ``count`` indices, or None when there are no more than ``limit``."""
    return torch.randperm(count, generator=generator)[:limit] if count > limit else None


def _mad_sigma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> float:
    """The median estimate from the four corners of 2x2 blocks ([C, n] each), averaged over channels."""
    hh = (a - b - c + d) / 2.0  # orthonormal 2-D Haar diagonal detail
    return float((hh.abs().median(dim=1).values.double() / 0.6745).mean())


def _flat_blocks(y: torch.Tensor, fraction: float) -> torch.Tensor:
    """Flat indices of the ``fraction`` of 2x2 blocks of a [C, H, W] image (H and W even) whose LL band is
    flattest: the 3x3 mean of |horizontal| + |vertical| LL differences, summed over channels."""
    ll = (y[:, 0::2, 0::2] + y[:, 0::2, 1::2] + y[:, 1::2, 0::2] + y[:, 1::2, 1::2]).float()
    gx = torch.nn.functional.pad((ll[:, :, 1:] - ll[:, :, :-1]).abs(), (0, 1))
    gy = torch.nn.functional.pad((ll[:, 1:, :] - ll[:, :-1, :]).abs(), (0, 0, 0, 1))
    activity = torch.nn.functional.avg_pool2d((gx + gy).sum(0)[None, None], 3, stride=1, padding=1).flatten()
    count = max(1, int(fraction * activity.numel()))
    return torch.topk(activity, count, largest=False).indices


def _clipped_mean(mu: torch.Tensor, sigma: float, high: float) -> torch.Tensor:
    """E[clip(mu + sigma N(0, 1), 0, high)]."""
    a, b = (0.0 - mu) / sigma, (high - mu) / sigma
    pdf = lambda z: torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = torch.special.ndtr
    return high * (1 - cdf(b)) + mu * (cdf(b) - cdf(a)) + sigma * (pdf(a) - pdf(b))


def _unclip_means(means: torch.Tensor, sigma: float, high: float) -> torch.Tensor:
    """The clean values whose clipped mean at ``sigma`` is ``means`` (a monotone map, inverted on a grid)."""
    grid = torch.linspace(-4 * sigma, high + 4 * sigma, 2048, dtype=torch.float64)
    clipped = _clipped_mean(grid, sigma, high)
    flat = means.clamp(float(clipped[0]), float(clipped[-1])).flatten()
    i = torch.searchsorted(clipped, flat).clamp(1, len(grid) - 1)
    lo, hi = clipped[i - 1], clipped[i]
    t = ((flat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return (grid[i - 1] + t * (grid[i] - grid[i - 1])).view_as(means)


def estimate_sigma(image: torch.Tensor, *, low: float = -1.0, high: float = 1.0) -> float:
    """Noise std of a [C, H, W] image whose pixels were clipped to [low, high] (the service's unit range by
    default), in the image's own units, averaged over channels."""
    if image.dim() != 3 or image.shape[1] < 2 or image.shape[2] < 2:
        raise ValueError("need a [C, H, W] image at least 2x2")
    scale = 255.0 / (high - low)
    y = (_sampled(image).double() - low) * scale  # [0, 255]
    y = y[:, : y.shape[1] // 2 * 2, : y.shape[2] // 2 * 2]
    clipped = int(((y <= 0.5) | (y >= 254.5)).sum()) / y.numel() >= CLIPPED_FRACTION
    local: list[torch.Tensor] = []  # the local means, computed once if a simulation needs them
    sigma = _matched(y, _flat_blocks(y, FLAT_FRACTION), clipped, local)
    if sigma > ALL_BLOCKS_ABOVE:  # texture no longer matters; the flat blocks lean to the clipped areas
        sigma = _matched(y, None, clipped, local)
    return sigma / scale


def _matched(y: torch.Tensor, chosen: torch.Tensor | None, clipped: bool, local: list[torch.Tensor]) -> float:
    """The estimate (0-255 scale) on the ``chosen`` 2x2 blocks of ``y`` (None: all): the plain one, or when
    the upload is ``clipped``, the sigma whose simulated statistic matches (see the module doc)."""
    if chosen is not None:  # a seeded subset bounds the copy of a large upload
        subset = _subset(len(chosen), PLAIN_BLOCKS, torch.Generator().manual_seed(1))
        chosen = chosen if subset is None else chosen[subset.sort().values]
    plain = _mad_sigma(*_corners(y, chosen))
    if not clipped or plain == 0:
        return plain
    if not local:  # in float32 (a large upload is megapixels), then only the sampled blocks in float64
        pad = LOCAL_MEAN // 2
        padded = torch.nn.functional.pad(y.float()[:, None], (pad, pad, pad, pad), mode="replicate")
        local.append(torch.nn.functional.avg_pool2d(padded, LOCAL_MEAN, stride=1)[:, 0])
    generator = torch.Generator().manual_seed(0)
    count = (y.shape[1] // 2) * (y.shape[2] // 2) if chosen is None else len(chosen)
    keep = _subset(count, MAX_BLOCKS, generator)
    if chosen is not None:
        keep = chosen if keep is None else chosen[keep]
    blocks, means = _blocks(y, keep), _blocks(local[0], keep)
    target = _mad_sigma(*blocks.unbind(1))
    noise = torch.randn(means.shape, generator=generator, dtype=torch.float64)

    def simulated(sigma: float) -> float:
        clean = _unclip_means(means, sigma, 255.0)
        return _mad_sigma(*torch.round(clean + sigma * noise).clamp(0, 255).unbind(1))

    lo, hi = target, 3 * target + 1.0
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if simulated(mid) < target else (lo, mid)
    return (lo + hi) / 2
