"""Reverse-diffusion samplers as per-row step functions, plus a reference loop.

Every function takes a batch whose rows may be at different timesteps: the coefficients ``ab`` (alpha_bar
at the current step) and ``ab_prev`` (at the step being moved to) are tensors of shape [B]. Multi-step
state (DPM-Solver++'s previous data prediction) is passed in per row, never held here. Noise is an
argument, so the caller decides where it comes from (a per-request generator).
"""

from __future__ import annotations

from typing import Callable

import torch

from app.diffusion.schedule import NoiseSchedule, Step

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [B] coefficient as [B, 1, 1, 1], in ``like``'s dtype and device."""
    return v.to(dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


def predict_x0_eps(
    model_output: torch.Tensor, x: torch.Tensor, ab: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's estimate of x_0 and of the noise eps, from x_t = sqrt(ab) x_0 + sqrt(1-ab) eps.

    1. epsilon (Ho et al. 2020, eq. 15):  x_0 = (x_t - sqrt(1-ab) eps) / sqrt(ab)
    2. v_prediction (Salimans & Ho 2022, sec. 4): v = sqrt(ab) eps - sqrt(1-ab) x_0, so
       x_0 = sqrt(ab) x_t - sqrt(1-ab) v and eps = sqrt(ab) v + sqrt(1-ab) x_t
    3. sample: the output is x_0 itself; eps = (x_t - sqrt(ab) x_0) / sqrt(1-ab)
    """
    a, s = _col(ab, x).sqrt(), _col(1 - ab, x).sqrt()
    if prediction_type == "epsilon":
        return (x - s * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * x - s * model_output, a * model_output + s * x
    if prediction_type == "sample":
        return model_output, (x - a * model_output) / s
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def ddpm_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    *,
    ab: torch.Tensor,
    ab_prev: torch.Tensor,
    noise: torch.Tensor | None,
    variance_type: str = "fixed_small",
) -> torch.Tensor:
    """Ancestral step of Ho et al. 2020 (eqs. 6-7), with the effective beta of a spaced schedule.

    1. alpha_t = ab / ab_prev, beta_t = 1 - alpha_t
    2. posterior mean  mu = sqrt(ab_prev) beta_t / (1-ab) x_0 + sqrt(alpha_t) (1-ab_prev) / (1-ab) x_t
    3. variance  fixed_small: (1-ab_prev)/(1-ab) beta_t (clamped at 1e-20);  fixed_large: beta_t
    4. x_{t-1} = mu + sqrt(variance) z, for the rows that get noise (``noise`` zero elsewhere)
    """
    alpha_t = ab / ab_prev
    beta_t = 1 - alpha_t
    mean = _col(ab_prev.sqrt() * beta_t / (1 - ab), x) * x0 + _col(alpha_t.sqrt() * (1 - ab_prev) / (1 - ab), x) * x
    if noise is None:
        return mean
    if variance_type == "fixed_small":
        variance = torch.clamp((1 - ab_prev) / (1 - ab) * beta_t, min=1e-20)
    elif variance_type == "fixed_large":
        variance = beta_t
    else:
        raise ValueError(f"unknown variance_type {variance_type!r}")
    return mean + _col(variance.sqrt(), x) * noise


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    *,
    ab: torch.Tensor,
    ab_prev: torch.Tensor,
    eta: torch.Tensor,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Song et al. 2021, eq. 12.

    1. sigma_t = eta sqrt((1-ab_prev)/(1-ab)) sqrt(1 - ab/ab_prev)               (eq. 16)
    2. x_{t-1} = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev - sigma_t^2) eps + sigma_t z
    """
    variance = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    std = eta * variance.sqrt()
    out = _col(ab_prev.sqrt(), x0) * x0 + _col((1 - ab_prev - std**2).clamp(min=0).sqrt(), x0) * eps
    if noise is not None:
        out = out + _col(std, x0) * noise
    return out


def dpmpp_2m_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    *,
    ab: torch.Tensor,
    ab_prev: torch.Tensor,
    prev_x0: torch.Tensor | None,
    prev_ab: torch.Tensor | None,
    second_order: torch.Tensor,
) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++"), Algorithm 2, midpoint form as in diffusers.

    With alpha = sqrt(ab), sigma = sqrt(1-ab), lambda = log(alpha / sigma):
    1. h = lambda_next - lambda_cur
    2. first order (DDIM in data-prediction form): D = x_0
    3. second order, for rows with a previous step: r = (lambda_cur - lambda_last) / h,
       D = x_0 + (x_0 - x_0_last) / (2 r)
    4. x_next = (sigma_next / sigma_cur) x - alpha_next (exp(-h) - 1) D
    At the clean end (ab_prev = 1, sigma_next = 0) step 4 gives x_next = D.
    """
    def lam(a: torch.Tensor) -> torch.Tensor:
        # via the noise-to-signal ratio, in the order diffusers computes it, to agree to float32 rounding
        ratio = ((1 - a) / a).sqrt()
        alpha = 1 / (ratio**2 + 1).sqrt()
        return torch.log(alpha) - torch.log(ratio * alpha)

    clean = ab_prev >= 1.0
    safe_prev = torch.where(clean, torch.full_like(ab_prev, 0.5), ab_prev)
    h = lam(safe_prev) - lam(ab)
    data = x0
    if prev_x0 is not None and prev_ab is not None:
        safe_last = torch.where(second_order, prev_ab, torch.full_like(prev_ab, 0.5))
        r = (lam(ab) - lam(safe_last)) / h
        correction = (x0 - prev_x0) / _col(2 * r, x0)
        data = torch.where(second_order.to(x0.device).view(-1, *([1] * (x0.dim() - 1))), x0 + correction, x0)
    sigma_ratio = torch.where(clean, torch.zeros_like(ab), ((1 - safe_prev) / (1 - ab)).sqrt())
    decay = torch.where(clean, torch.full_like(ab, -1.0), torch.expm1(-h))
    return _col(sigma_ratio, x) * x - _col(ab_prev.sqrt() * decay, x) * data


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): out = (1 + w) cond - w uncond.

    ``scale`` w is per row; w = 0 is the plain conditional model.
    """
    return cond + _col(scale, cond) * (cond - uncond)


def needs_noise(sampler: str, *, t: float, eta: float) -> bool:
    """Whether a step draws fresh noise: DDPM for t > 0 (as diffusers), DDIM when eta > 0, 2M never."""
    if sampler == "ddpm":
        return t > 0
    if sampler == "ddim":
        return eta > 0
    return False


def sampler_step(
    sampler: str,
    model_output: torch.Tensor,
    x: torch.Tensor,
    *,
    schedule: NoiseSchedule,
    ab: torch.Tensor,
    ab_prev: torch.Tensor,
    eta: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    prev_x0: torch.Tensor | None = None,
    prev_ab: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``sampler`` for a batch of rows that all use it; returns (x_next, x_0 estimate).

    ``ab``, ``ab_prev``, ``eta`` and ``prev_ab`` are per-row [B] tensors (float64 is fine; results come
    back in ``x``'s dtype). For DPM-Solver++(2M), ``prev_ab`` is NaN on rows without a previous step.
    """
    x0, eps = predict_x0_eps(model_output, x, ab, schedule.prediction_type)
    if sampler == "dpmpp_2m":
        second = torch.zeros_like(ab, dtype=torch.bool) if prev_ab is None else ~torch.isnan(prev_ab) & (ab_prev < 1.0)
        prev_ab = None if prev_ab is None else torch.nan_to_num(prev_ab, nan=0.5)
        out = dpmpp_2m_step(x, x0, ab=ab, ab_prev=ab_prev, prev_x0=prev_x0, prev_ab=prev_ab, second_order=second)
        return out.to(x.dtype), x0
    if schedule.clip_sample:
        x0 = x0.clamp(-schedule.clip_sample_range, schedule.clip_sample_range)
    if sampler == "ddpm":
        out = ddpm_step(x, x0, ab=ab, ab_prev=ab_prev, noise=noise, variance_type=schedule.variance_type)
    elif sampler == "ddim":
        if schedule.clip_sample:
            # DDIM's update mixes x_0 and eps; after clipping x_0 the noise estimate must be re-derived from
            # it (GLIDE; diffusers' ``use_clipped_model_output=True``), or the step leaves the ODE it follows:
            # eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab)
            eps = (x - _col(ab, x).sqrt() * x0) / _col(1 - ab, x).sqrt()
        eta = torch.zeros_like(ab) if eta is None else eta
        out = ddim_step(x0, eps, ab=ab, ab_prev=ab_prev, eta=eta, noise=noise)
    else:
        raise ValueError(f"unknown sampler {sampler!r}: expected one of {SAMPLERS}")
    return out.to(x.dtype), x0


def sample_loop(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    plan: list[Step],
    *,
    sampler: str,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    noise: Callable[[tuple[int, ...]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Reference loop: the whole batch walks ``plan`` together. The engine makes the same calls per row.

    ``denoiser(x, t)`` returns the raw network output for a [B] tensor of timesteps; ``noise(shape)``
    draws standard normal noise when a step needs it.
    """
    B = x.shape[0]
    prev_x0 = prev_ab = None

    def per_row(value: float) -> torch.Tensor:
        return torch.full((B,), value, dtype=torch.float32)

    for step in plan:
        draw = noise is not None and needs_noise(sampler, t=step.t, eta=eta)
        x, x0 = sampler_step(
            sampler,
            denoiser(x, torch.full((B,), float(step.t))),
            x,
            schedule=schedule,
            ab=per_row(step.ab),
            ab_prev=per_row(step.ab_prev),
            eta=per_row(eta),
            noise=noise(tuple(x.shape)) if draw else None,
            prev_x0=prev_x0,
            prev_ab=prev_ab,
        )
        prev_x0, prev_ab = x0, per_row(step.ab)
    return x
