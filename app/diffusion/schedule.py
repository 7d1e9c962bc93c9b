"""Noise schedules read from a diffusers ``scheduler_config.json``, and the timestep plans samplers walk.

Notation (Ho et al. 2020, "DDPM"): beta_t is the per-step variance, alpha_bar_t = prod_{s<=t} (1 - beta_s),
so q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I). The noise-to-signal ratio
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) is the std of the same noise in the x_0 scale
(Karras et al. 2022), which is how a denoising request's sigma maps onto a timestep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from app.diffusion.samplers import Step, get_sampler
from app.diffusion.schedule_config import schedule_problem

PredictionType = Literal["epsilon", "v_prediction", "sample"]
Spacing = Literal["linspace", "leading", "trailing"]


def _cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def betas_from_config(config: dict[str, Any]) -> torch.Tensor:
    """The beta_t sequence a diffusers scheduler config describes (float32, as diffusers computes it)."""
    if (problem := schedule_problem(config)) is not None:
        raise ValueError(problem)
    steps = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float32)
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32) ** 2
    return _cosine_betas(steps)  # squaredcos_cap_v2, the one other schedule_problem lets through


@dataclass(frozen=True)
class NoiseSchedule:
    """A trained model's schedule: alpha_bar on the integer grid 0..T-1, plus the config's sampling options."""

    alphas_cumprod: torch.Tensor  # [T], float32
    prediction_type: PredictionType
    beta_schedule: str = "linear"
    spacing: Spacing | None = None  # None: the config names none, and each sampler takes its class's default
    steps_offset: int = 0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    variance_type: str = "fixed_small"
    set_alpha_to_one: bool = True
    # DDIM after clipping x_0: re-derive the noise estimate from it (diffusers' use_clipped_model_output=True)
    clipped_eps: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NoiseSchedule":
        betas = betas_from_config(config)  # refuses a config schedule_problem finds a problem in
        return cls(
            alphas_cumprod=torch.cumprod(1.0 - betas, dim=0),
            prediction_type=config.get("prediction_type", "epsilon"),
            beta_schedule=config.get("beta_schedule", "linear"),
            spacing=config.get("timestep_spacing"),
            steps_offset=int(config.get("steps_offset", 0)),
            clip_sample=bool(config.get("clip_sample", True)),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
            variance_type=config.get("variance_type") or "fixed_small",
            set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
        )

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, t: float) -> float:
        """alpha_bar at a real-valued t in [-1, T-1]; t < 0 means the clean end (alpha_bar = 1).

        Between grid points, log(sigma) is interpolated linearly (sigma = sqrt((1 - alpha_bar) / alpha_bar)), as
        ``sigma_to_t`` inverts it, so ``alpha_bar(sigma_to_t(s)) == 1 / (1 + s**2)``: a start drawn at a noise
        level is exactly at the timestep its chain takes it for. (Interpolating log(alpha_bar) instead put
        the noise of a start at sigma 1.5/255 3.8% below what the chain assumed.)
        """
        if t < 0:
            return 1.0
        lo = int(math.floor(t))
        hi = min(lo + 1, self.num_train_timesteps - 1)
        frac = t - lo
        if frac == 0 or hi == lo:
            return float(self.alphas_cumprod[lo])
        ab_lo, ab_hi = float(self.alphas_cumprod[lo]), float(self.alphas_cumprod[hi])
        if ab_lo >= 1.0:  # sigma 0 at lo (a beta under float32's resolution): log(alpha_bar), which is finite
            return math.exp((1 - frac) * math.log(ab_lo) + frac * math.log(ab_hi))
        log_sigma_lo, log_sigma_hi = (0.5 * math.log((1 - ab) / ab) for ab in (ab_lo, ab_hi))
        return 1.0 / (1.0 + math.exp(2 * ((1 - frac) * log_sigma_lo + frac * log_sigma_hi)))

    def sigma_to_t(self, sigma: float) -> float:
        """The real-valued t whose noise-to-signal ratio sqrt((1 - alpha_bar)/alpha_bar) equals ``sigma``.

        Interpolates linearly in log(sigma), as diffusers' ``_sigma_to_t`` does; clamps to [0, T-1].
        """
        if sigma <= 0:
            raise ValueError("sigma must be positive")
        ab = self.alphas_cumprod.double()
        log_sigmas = torch.log(((1 - ab) / ab).sqrt()).numpy()
        return float(np.interp(math.log(sigma), log_sigmas, np.arange(len(log_sigmas))))

    def t_to_sigma(self, t: float) -> float:
        ab = self.alpha_bar(t)
        return math.sqrt((1 - ab) / ab)


def generation_plan(schedule: NoiseSchedule, sampler: str, num_steps: int) -> list[Step]:
    """The steps the named sampler walks from pure noise, matching the diffusers scheduler of the same name
    (each sampler's plan lives with it in ``SAMPLERS``)."""
    return get_sampler(sampler).plan(schedule, num_steps)


def restoration_plan(schedule: NoiseSchedule, t_start: float, num_steps: int) -> list[Step]:
    """Steps from a real-valued ``t_start`` down to the clean image, evenly spaced in t (DMID-style
    restoration starts the reverse chain at the timestep whose noise matches the input's)."""
    if num_steps < 1:
        raise ValueError("steps must be at least 1")
    # A chain that starts at (or rounds to) the clean end would repeat t: repeats are merged, so a step
    # never goes from a noise level to itself.
    ts = list(dict.fromkeys(np.linspace(t_start, 0.0, num_steps + 1)[:-1].tolist()))
    abs_ = [schedule.alpha_bar(t) for t in ts]
    return [Step(t, a, a_prev) for t, a, a_prev in zip(ts, abs_, abs_[1:] + [1.0])]
