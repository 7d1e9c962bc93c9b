"""The forward process and the link between an image's noise level and a timestep.

Pixels live in [-1, 1] (``app.diffusion.pixels``), so Gaussian noise of std sigma_255 on the 0-255 scale
is std 2 sigma_255 / 255 here.
"""

from __future__ import annotations

import torch

from app.diffusion.schedule import NoiseSchedule


def q_sample(x0: torch.Tensor, *, ab: float, noise: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) = N(sqrt(ab) x_0, (1 - ab) I)  (Ho et al. 2020, eq. 4)."""
    return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise


def add_gaussian_noise(x0: torch.Tensor, *, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """y = x_0 + sigma n: the noisy photograph a denoising request receives (variance-exploding form)."""
    return x0 + sigma * noise


def start_for_restoration(y: torch.Tensor, schedule: NoiseSchedule, sigma: float) -> tuple[float, torch.Tensor]:
    """Where the reverse chain starts for an image y = x_0 + sigma n (DMID, Li et al., TPAMI 2024).

    1. t* solves sqrt((1 - ab_t) / ab_t) = sigma (real-valued, between grid timesteps if need be)
    2. x_t* = sqrt(ab_t*) y = sqrt(ab) x_0 + sqrt(ab) sigma n, and sqrt(ab) sigma = sqrt(1 - ab):
       exactly a sample of q(x_t* | x_0).
    """
    t = schedule.sigma_to_t(sigma)
    return t, schedule.alpha_bar(t) ** 0.5 * y
