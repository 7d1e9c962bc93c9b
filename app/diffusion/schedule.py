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

PredictionType = Literal["epsilon", "v_prediction", "sample"]
Spacing = Literal["linspace", "leading", "trailing"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("linspace", "leading", "trailing")


def _cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def betas_from_config(config: dict[str, Any]) -> torch.Tensor:
    """The beta_t sequence a diffusers scheduler config describes (float32, as diffusers computes it)."""
    steps = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float32)
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr is not supported")
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":
        return _cosine_betas(steps)
    raise ValueError(f"unknown beta_schedule {kind!r}: expected linear, scaled_linear or squaredcos_cap_v2")


@dataclass(frozen=True)
class NoiseSchedule:
    """A trained model's schedule: alpha_bar on the integer grid 0..T-1, plus the config's sampling options."""

    alphas_cumprod: torch.Tensor  # [T], float32
    prediction_type: PredictionType
    spacing: Spacing = "leading"
    steps_offset: int = 0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    variance_type: str = "fixed_small"
    set_alpha_to_one: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NoiseSchedule":
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction!r}: expected one of {PREDICTION_TYPES}")
        spacing = config.get("timestep_spacing", "leading")
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep_spacing {spacing!r}: expected one of {SPACINGS}")
        if config.get("thresholding"):
            raise ValueError("dynamic thresholding is not supported")
        variance = config.get("variance_type") or "fixed_small"
        if variance not in ("fixed_small", "fixed_large"):
            raise ValueError(f"variance_type {variance!r} is not supported: expected fixed_small or fixed_large")
        betas = betas_from_config(config)
        return cls(
            alphas_cumprod=torch.cumprod(1.0 - betas, dim=0),
            prediction_type=prediction,
            spacing=spacing,
            steps_offset=int(config.get("steps_offset", 0)),
            clip_sample=bool(config.get("clip_sample", True)),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
            variance_type=variance,
            set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
        )

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, t: float) -> float:
        """alpha_bar at a real-valued t in [-1, T-1]; t < 0 means the clean end (alpha_bar = 1).

        Between grid points, log(alpha_bar) is interpolated linearly, so any noise level has a timestep.
        """
        if t < 0:
            return 1.0
        lo = int(math.floor(t))
        hi = min(lo + 1, self.num_train_timesteps - 1)
        frac = t - lo
        log_lo = math.log(float(self.alphas_cumprod[lo]))
        log_hi = math.log(float(self.alphas_cumprod[hi]))
        return math.exp((1 - frac) * log_lo + frac * log_hi)

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


@dataclass(frozen=True)
class Step:
    """One sampler step: evaluate the network at ``t``, move from alpha_bar ``ab`` to ``ab_prev``."""

    t: float
    ab: float
    ab_prev: float


def spaced_timesteps(num_train: int, num_steps: int, spacing: str, *, steps_offset: int = 0) -> list[int]:
    """Integer timesteps, high to low, as diffusers' DDPMScheduler/DDIMScheduler ``set_timesteps`` spaces them."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"steps must be between 1 and {num_train}")
    if spacing == "linspace":
        ts = np.linspace(0, num_train - 1, num_steps).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, num_steps) * (num_train // num_steps)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(num_train, 0, -num_train / num_steps)) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}")
    return [int(t) for t in ts]


def dpm_timesteps(num_train: int, num_steps: int, spacing: str, *, steps_offset: int = 0) -> list[int]:
    """Timesteps as diffusers' DPMSolverMultistepScheduler spaces them: N+1 points, the last dropped,
    because its final step goes to sigma = 0 rather than to a grid timestep."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"steps must be between 1 and {num_train}")
    if spacing == "linspace":
        ts = np.linspace(0, num_train - 1, num_steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, num_steps + 1) * (num_train // (num_steps + 1))).round()[::-1][:-1] + steps_offset
    elif spacing == "trailing":
        ts = np.arange(num_train, 0, -num_train / num_steps).round() - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}")
    # Near num_train steps, rounding repeats timesteps (leading spacing even collapses to 0); a repeated
    # timestep makes the 2M step size h zero. Repeats are merged, so such a request takes fewer steps.
    return list(dict.fromkeys(int(t) for t in ts))


def generation_plan(schedule: NoiseSchedule, sampler: str, num_steps: int) -> list[Step]:
    """The steps a sampler walks from pure noise, matching the diffusers scheduler of the same name.

    1. DDPM: the next timestep in the list is the previous one; after the last comes alpha_bar = 1.
    2. DDIM: the previous timestep is t - T // N (diffusers' rule, even for linspace spacing); below 0
       comes alpha_bar = 1 (``set_alpha_to_one``) or alpha_bar_0.
    3. DPM-Solver++(2M): its own spacing (``dpm_timesteps``), ending at sigma = 0 (alpha_bar = 1).
    """
    T = schedule.num_train_timesteps
    ab = schedule.alphas_cumprod
    final = 1.0 if schedule.set_alpha_to_one else float(ab[0])
    if sampler == "ddpm":
        ts = spaced_timesteps(T, num_steps, schedule.spacing, steps_offset=schedule.steps_offset)
        prevs = ts[1:] + [-1]
        return [Step(t, float(ab[t]), float(ab[p]) if p >= 0 else 1.0) for t, p in zip(ts, prevs)]
    if sampler == "ddim":
        ts = spaced_timesteps(T, num_steps, schedule.spacing, steps_offset=schedule.steps_offset)
        return [Step(t, float(ab[t]), float(ab[t - T // num_steps]) if t - T // num_steps >= 0 else final) for t in ts]
    if sampler == "dpmpp_2m":
        ts = dpm_timesteps(T, num_steps, schedule.spacing, steps_offset=schedule.steps_offset)
        prevs = ts[1:]
        return [Step(t, float(ab[t]), float(ab[p])) for t, p in zip(ts, prevs)] + [Step(ts[-1], float(ab[ts[-1]]), 1.0)]
    raise ValueError(f"unknown sampler {sampler!r}: expected ddpm, ddim or dpmpp_2m")


def restoration_plan(schedule: NoiseSchedule, t_start: float, num_steps: int) -> list[Step]:
    """Steps from a real-valued ``t_start`` down to the clean image, evenly spaced in t (DMID-style
    restoration starts the reverse chain at the timestep whose noise matches the input's)."""
    if num_steps < 1:
        raise ValueError("steps must be at least 1")
    ts = np.linspace(t_start, 0.0, num_steps + 1)[:-1].tolist()
    abs_ = [schedule.alpha_bar(t) for t in ts]
    return [Step(t, a, a_prev) for t, a, a_prev in zip(ts, abs_, abs_[1:] + [1.0])]
