"""Estimate the std of additive white Gaussian noise in an image (for ``sigma: "auto"``).

Donoho & Johnstone 1994: in the finest diagonal wavelet band (Haar HH) of a natural image, almost all
energy is noise, and the median absolute value is robust to the few edges: sigma = median(|HH|) / 0.6745.
"""

from __future__ import annotations

import torch


def estimate_sigma(image: torch.Tensor) -> float:
    """Noise std of a [C, H, W] image, in the image's own units, averaged over channels."""
    if image.dim() != 3 or image.shape[1] < 2 or image.shape[2] < 2:
        raise ValueError("need a [C, H, W] image at least 2x2")
    x = image.double()
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :h, :w]
    a, b = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
    c, d = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    hh = (a - b - c + d) / 2.0  # orthonormal 2-D Haar diagonal detail
    per_channel = hh.flatten(1).abs().median(dim=1).values / 0.6745
    return float(per_channel.mean())
