"""Reverse-diffusion samplers: one registry, ``SAMPLERS``, each entry a per-row step plus its plan.

Every step function takes a batch whose rows may be at different timesteps: the coefficients ``ab``
(alpha_bar at the current step) and ``ab_prev`` (at the step being moved to) are tensors of shape [B].
Multi-step state (DPM-Solver++'s previous data prediction) is passed in per row, never held here. Noise
is an argument, so the caller decides where it comes from (a per-request generator).

Adding a sampler is one ``Sampler`` entry in ``SAMPLERS`` plus its parity test against diffusers: the
name type (``SamplerName``), the API's validation, the model card and the engine all read the registry.

This module imports no torch (the math uses tensor methods only; timestep plans are numpy), so the HTTP
layer can import the registry's names without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from app.diffusion.schedule import NoiseSchedule


@dataclass(frozen=True)
class Step:
    """One sampler step: evaluate the network at ``t``, move from alpha_bar ``ab`` to ``ab_prev``."""

    t: float
    ab: float
    ab_prev: float


def _col(v: Tensor, like: Tensor) -> Tensor:
    """A [B] coefficient as [B, 1, 1, 1], in ``like``'s dtype and device."""
    return v.to(dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


def predict_x0_eps(model_output: Tensor, x: Tensor, ab: Tensor, prediction_type: str) -> tuple[Tensor, Tensor]:
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
    x: Tensor,
    x0: Tensor,
    *,
    ab: Tensor,
    ab_prev: Tensor,
    noise: Tensor | None,
    variance_type: str = "fixed_small",
) -> Tensor:
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
        variance = ((1 - ab_prev) / (1 - ab) * beta_t).clamp(min=1e-20)
    elif variance_type == "fixed_large":
        variance = beta_t
    else:
        raise ValueError(f"unknown variance_type {variance_type!r}")
    return mean + _col(variance.sqrt(), x) * noise


def ddim_step(
    x0: Tensor,
    eps: Tensor,
    *,
    ab: Tensor,
    ab_prev: Tensor,
    eta: Tensor,
    noise: Tensor | None,
) -> Tensor:
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
    x: Tensor,
    x0: Tensor,
    *,
    ab: Tensor,
    ab_prev: Tensor,
    prev_x0: Tensor | None,
    prev_ab: Tensor | None,
    second_order: Tensor,
) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++"), Algorithm 2, midpoint form as in diffusers.

    With alpha = sqrt(ab), sigma = sqrt(1-ab), lambda = log(alpha / sigma):
    1. h = lambda_next - lambda_cur
    2. first order (DDIM in data-prediction form): D = x_0
    3. second order, for rows with a previous step: r = (lambda_cur - lambda_last) / h,
       D = x_0 + (x_0 - x_0_last) / (2 r)
    4. x_next = (sigma_next / sigma_cur) x - alpha_next (exp(-h) - 1) D
    At the clean end (ab_prev = 1, sigma_next = 0) step 4 gives x_next = D.
    """

    def lam(a: Tensor) -> Tensor:
        # via the noise-to-signal ratio, in the order diffusers computes it, to agree to float32 rounding
        ratio = ((1 - a) / a).sqrt()
        alpha = 1 / (ratio**2 + 1).sqrt()
        return alpha.log() - (ratio * alpha).log()

    clean = ab_prev >= 1.0
    safe_prev = ab_prev.new_full(ab_prev.shape, 0.5).where(clean, ab_prev)
    h = lam(safe_prev) - lam(ab)
    data = x0
    if prev_x0 is not None and prev_ab is not None:
        safe_last = prev_ab.where(second_order, prev_ab.new_full(prev_ab.shape, 0.5))
        r = (lam(ab) - lam(safe_last)) / h
        correction = (x0 - prev_x0) / _col(2 * r, x0)
        data = (x0 + correction).where(second_order.to(x0.device).view(-1, *([1] * (x0.dim() - 1))), x0)
    sigma_ratio = ab.new_zeros(ab.shape).where(clean, ((1 - safe_prev) / (1 - ab)).sqrt())
    decay = ab.new_full(ab.shape, -1.0).where(clean, (-h).expm1())
    return _col(sigma_ratio, x) * x - _col(ab_prev.sqrt() * decay, x) * data


def cfg_combine(cond: Tensor, uncond: Tensor, scale: Tensor) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): out = (1 + w) cond - w uncond.

    ``scale`` w is per row; w = 0 is the plain conditional model.
    """
    return cond + _col(scale, cond) * (cond - uncond)


# -- the registry ---------------------------------------------------------------------------------------
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


def _ab(schedule: NoiseSchedule, t: int) -> float:
    return float(schedule.alphas_cumprod[t])


def ddpm_plan(schedule: NoiseSchedule, num_steps: int) -> list[Step]:
    """DDPM: the next timestep in the list is the previous one; after the last comes alpha_bar = 1."""
    ts = spaced_timesteps(schedule.num_train_timesteps, num_steps, schedule.spacing, steps_offset=schedule.steps_offset)
    prevs = ts[1:] + [-1]
    return [Step(t, _ab(schedule, t), _ab(schedule, p) if p >= 0 else 1.0) for t, p in zip(ts, prevs)]


def ddim_plan(schedule: NoiseSchedule, num_steps: int) -> list[Step]:
    """DDIM: the previous timestep is t - T // N (diffusers' rule, even for linspace spacing); below 0 comes
    alpha_bar = 1 (``set_alpha_to_one``) or alpha_bar_0."""
    T = schedule.num_train_timesteps
    final = 1.0 if schedule.set_alpha_to_one else _ab(schedule, 0)
    ts = spaced_timesteps(T, num_steps, schedule.spacing, steps_offset=schedule.steps_offset)
    return [
        Step(t, _ab(schedule, t), _ab(schedule, t - T // num_steps) if t - T // num_steps >= 0 else final) for t in ts
    ]


def dpmpp_2m_plan(schedule: NoiseSchedule, num_steps: int) -> list[Step]:
    """DPM-Solver++(2M): its own spacing (``dpm_timesteps``), ending at sigma = 0 (alpha_bar = 1)."""
    ts = dpm_timesteps(schedule.num_train_timesteps, num_steps, schedule.spacing, steps_offset=schedule.steps_offset)
    last = Step(ts[-1], _ab(schedule, ts[-1]), 1.0)
    return [Step(t, _ab(schedule, t), _ab(schedule, p)) for t, p in zip(ts, ts[1:])] + [last]


def _clipped_x0(x0: Tensor, schedule: NoiseSchedule) -> Tensor:
    if schedule.clip_sample:
        return x0.clamp(-schedule.clip_sample_range, schedule.clip_sample_range)
    return x0


def _ddpm(model_output, x, *, schedule, ab, ab_prev, eta, noise, prev_x0, prev_ab) -> tuple[Tensor, Tensor]:
    x0, _ = predict_x0_eps(model_output, x, ab, schedule.prediction_type)
    x0 = _clipped_x0(x0, schedule)
    out = ddpm_step(x, x0, ab=ab, ab_prev=ab_prev, noise=noise, variance_type=schedule.variance_type)
    return out.to(x.dtype), x0


def _ddim(model_output, x, *, schedule, ab, ab_prev, eta, noise, prev_x0, prev_ab) -> tuple[Tensor, Tensor]:
    x0, eps = predict_x0_eps(model_output, x, ab, schedule.prediction_type)
    if schedule.clip_sample:
        x0 = _clipped_x0(x0, schedule)
        # DDIM's update mixes x_0 and eps; after clipping x_0 the noise estimate must be re-derived from
        # it (GLIDE; diffusers' ``use_clipped_model_output=True``), or the step leaves the ODE it follows:
        # eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab). Latent models step as their pipelines do, without.
        if schedule.clipped_eps:
            eps = (x - _col(ab, x).sqrt() * x0) / _col(1 - ab, x).sqrt()
    eta = ab.new_zeros(ab.shape) if eta is None else eta
    out = ddim_step(x0, eps, ab=ab, ab_prev=ab_prev, eta=eta, noise=noise)
    return out.to(x.dtype), x0


def _dpmpp_2m(model_output, x, *, schedule, ab, ab_prev, eta, noise, prev_x0, prev_ab) -> tuple[Tensor, Tensor]:
    """``prev_ab`` is NaN on rows without a previous step (first order there)."""
    x0, _ = predict_x0_eps(model_output, x, ab, schedule.prediction_type)
    # Second order needs a previous step and two distinct steps (h != 0, r != 0): a chain that starts at the
    # clean end (a denoise of a clean photo) repeats t = 0, where the second-order term is 0 / 0.
    second = ab.new_zeros(ab.shape).bool()
    if prev_ab is not None:
        second = ~prev_ab.isnan() & (ab_prev < 1.0) & (ab_prev != ab) & (prev_ab != ab)
    prev_ab = None if prev_ab is None else prev_ab.nan_to_num(nan=0.5)
    out = dpmpp_2m_step(x, x0, ab=ab, ab_prev=ab_prev, prev_x0=prev_x0, prev_ab=prev_ab, second_order=second)
    return out.to(x.dtype), x0


# -- samplers on a sigma grid (Karras et al. 2022): Euler, Euler ancestral, DPM-Solver++(2M) on Karras sigmas --
# They step in sigma = sqrt((1 - ab) / ab), the noise-to-signal ratio; a Step carries ab = 1 / (1 + sigma^2)
# and the network is evaluated at the step's (possibly fractional) timestep, as diffusers does.
def _train_sigmas(schedule: NoiseSchedule) -> np.ndarray:
    ab = np.asarray(schedule.alphas_cumprod, dtype=np.float32)
    return ((1 - ab) / ab) ** 0.5


def _sigma_steps(timesteps: np.ndarray, sigmas: np.ndarray) -> list[Step]:
    """Steps through ``sigmas`` (descending, float32) to sigma = 0, evaluated at ``timesteps``."""
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    ab = [1.0 / (1.0 + float(s) ** 2) for s in sigmas]
    return [Step(float(t), ab[i], ab[i + 1]) for i, t in enumerate(timesteps)]


def sigma_grid_timesteps(schedule: NoiseSchedule, num_steps: int) -> np.ndarray:
    """diffusers' Euler schedulers' timesteps: like DDIM's, but linspace is not rounded (float timesteps)."""
    T = schedule.num_train_timesteps
    if not 1 <= num_steps <= T:
        raise ValueError(f"steps must be between 1 and {T}")
    if schedule.spacing == "linspace":
        return np.linspace(0, T - 1, num_steps, dtype=np.float32)[::-1].copy()
    return np.array(spaced_timesteps(T, num_steps, schedule.spacing, steps_offset=schedule.steps_offset), np.float32)


def euler_plan(schedule: NoiseSchedule, num_steps: int) -> list[Step]:
    """EulerDiscreteScheduler's grid: sigma interpolated linearly in t at each timestep, then sigma = 0."""
    timesteps = sigma_grid_timesteps(schedule, num_steps)
    train = _train_sigmas(schedule)
    return _sigma_steps(timesteps, np.interp(timesteps, np.arange(len(train)), train))


def karras_plan(schedule: NoiseSchedule, num_steps: int) -> list[Step]:
    """DPMSolverMultistepScheduler(use_karras_sigmas=True): sigma_i = (s_max^(1/7) + i/(N-1) (s_min^(1/7) -
    s_max^(1/7)))^7 (Karras et al. 2022, eq. 5, rho = 7) between the schedule's extreme sigmas, each
    evaluated at the timestep of its sigma (rounded, except for the cosine schedule, as diffusers), then 0."""
    if not 1 <= num_steps <= schedule.num_train_timesteps:
        raise ValueError(f"steps must be between 1 and {schedule.num_train_timesteps}")
    train = _train_sigmas(schedule)
    rho, ramp = 7.0, np.linspace(0, 1, num_steps)
    lo, hi = float(train[0]) ** (1 / rho), float(train[-1]) ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    timesteps = np.array([schedule.sigma_to_t(float(s)) for s in sigmas])
    if schedule.beta_schedule != "squaredcos_cap_v2":
        timesteps = timesteps.round()
    return _sigma_steps(timesteps, sigmas)


def euler_noise_scale(schedule: NoiseSchedule, plan: list[Step]) -> float:
    """The initial noise's scale in x, for diffusers' Euler schedulers: their init_noise_sigma is
    sqrt(sigma_max^2 + 1) with leading spacing (x = z / sqrt(sigma^2 + 1) is then unit noise) but sigma_max
    with linspace and trailing spacing, which is sqrt(1 - ab) in x."""
    if schedule.spacing in ("linspace", "trailing"):
        return (1.0 - plan[0].ab) ** 0.5
    return 1.0


def _euler(model_output, x, *, schedule, ab, ab_prev, eta, noise, prev_x0, prev_ab) -> tuple[Tensor, Tensor]:
    """Euler (Karras et al. 2022, Algorithm 1 without churn). In z = x / sqrt(ab), z + (z - x_0) / sigma
    (sigma' - sigma) = x_0 + sigma' eps; in x that is sqrt(ab') x_0 + sqrt(1 - ab') eps, DDIM's
    deterministic step, unclipped."""
    x0, eps = predict_x0_eps(model_output, x, ab, schedule.prediction_type)
    return ddim_step(x0, eps, ab=ab, ab_prev=ab_prev, eta=ab.new_zeros(ab.shape), noise=None).to(x.dtype), x0


def _euler_ancestral(model_output, x, *, schedule, ab, ab_prev, eta, noise, prev_x0, prev_ab) -> tuple[Tensor, Tensor]:
    """Euler ancestral (k-diffusion ``sample_euler_ancestral``; diffusers EulerAncestralDiscreteScheduler):
    1. sigma_up = sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2), sigma_down = sqrt(sigma'^2 - sigma_up^2)
    2. z' = x_0 + sigma_down eps + sigma_up n, in z = x / sqrt(ab); x' = sqrt(ab') z'."""
    x0, eps = predict_x0_eps(model_output, x, ab, schedule.prediction_type)
    s_from, s_to = ((1 - ab) / ab).sqrt(), ((1 - ab_prev) / ab_prev).sqrt()
    s_up = (s_to**2 * (s_from**2 - s_to**2) / s_from**2).clamp(min=0).sqrt()
    s_down = (s_to**2 - s_up**2).clamp(min=0).sqrt()
    z = x0 + _col(s_down, x) * eps
    if noise is not None:
        z = z + _col(s_up, x) * noise
    return (_col(ab_prev.sqrt(), x) * z).to(x.dtype), x0


StepFn = Callable[..., "tuple[Tensor, Tensor]"]


@dataclass(frozen=True)
class Sampler:
    """A sampler: its timestep plan, its step, whether a step draws noise, whether it keeps history.

    ``step(model_output, x, *, schedule, ab, ab_prev, eta, noise, prev_x0, prev_ab)`` returns
    (x_next, x_0 estimate) for a batch of rows; ``draws_noise(t, eta)`` says whether the step at ``t``
    needs fresh noise; a sampler that ``keeps_history`` gets each row's previous x_0 estimate and its
    alpha_bar back as ``prev_x0``/``prev_ab``.
    """

    name: str
    plan_fn: Callable[[NoiseSchedule, int], list[Step]]
    step: StepFn
    draws_noise: Callable[[float, float], bool]
    keeps_history: bool = False
    description: str = ""
    reads_eta: bool = False  # eta scales its noise (DDIM's); the API refuses an eta given to any other
    noise_scale_fn: Callable[[NoiseSchedule, list[Step]], float] = lambda schedule, plan: 1.0
    # The grid of training timesteps the plan evaluates, from (T, steps, spacing, steps_offset), so a request
    # can be checked without torch; None when the grid comes from sigmas and is always inside [0, T).
    grid: Callable[..., list[int]] | None = spaced_timesteps
    # The timestep spacing of a scheduler config that names none: the default of the diffusers class this
    # sampler matches, as diffusers itself fills a missing key (configs saved before diffusers 0.16 have none)
    default_spacing: str = "leading"

    def spacing(self, configured: str | None) -> str:
        return configured or self.default_spacing

    def _schedule(self, schedule: NoiseSchedule) -> NoiseSchedule:
        if schedule.spacing is not None:
            return schedule
        return dataclasses.replace(schedule, spacing=self.default_spacing)

    def plan(self, schedule: NoiseSchedule, num_steps: int) -> list[Step]:
        """The steps this sampler walks from pure noise on ``schedule``, as its diffusers scheduler would."""
        return self.plan_fn(self._schedule(schedule), num_steps)

    def noise_scale(self, schedule: NoiseSchedule, plan: list[Step]) -> float:
        """The initial noise's scale in x for ``plan`` (diffusers' ``init_noise_sigma``, in x)."""
        return self.noise_scale_fn(self._schedule(schedule), plan)

    def fits(self, num_train: int, num_steps: int, spacing: str | None, steps_offset: int) -> bool:
        """Whether ``num_steps`` steps stay on the schedule's timesteps (with ``leading`` spacing and an
        offset, as Stable Diffusion's configs have, T steps would reach timestep T, past the end)."""
        if not 1 <= num_steps <= num_train:
            return False
        if self.grid is None:
            return True
        grid = self.grid(num_train, num_steps, self.spacing(spacing), steps_offset=steps_offset)
        # A grid whose repeats were merged takes fewer steps than asked; one that collapses (DPM-Solver's
        # leading spacing at T steps: every timestep 0, one step from pure noise) would answer noise. Trailing
        # spacing at 61, 103, 121 ... of 1,000 steps gets one point too many from arange's rounding, the last
        # at timestep -1 (in diffusers too), which reads the schedule's far end: noise again
        return max(grid) < num_train and min(grid) >= 0 and 2 * len(grid) >= num_steps


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        # Ho et al. 2020; noise at every step but the last (t > 0), as diffusers
        Sampler("ddpm", ddpm_plan, _ddpm, lambda t, eta: t > 0, description="DDPM ancestral sampling"),
        # Song et al. 2021; noise only when eta > 0
        Sampler(
            "ddim", ddim_plan, _ddim, lambda t, eta: eta > 0, description="DDIM (eta: noise scale)", reads_eta=True
        ),
        Sampler(
            "dpmpp_2m",
            dpmpp_2m_plan,
            _dpmpp_2m,
            lambda t, eta: False,
            keeps_history=True,
            description="DPM-Solver++(2M), deterministic",
            grid=dpm_timesteps,
            default_spacing="linspace",
        ),
        # Karras et al. 2022 (diffusers EulerDiscreteScheduler)
        Sampler(
            "euler",
            euler_plan,
            _euler,
            lambda t, eta: False,
            description="Euler, deterministic",
            noise_scale_fn=euler_noise_scale,
            default_spacing="linspace",
        ),
        # fresh noise at every step, the last included (diffusers draws it there too, times sigma_up = 0)
        Sampler(
            "euler_a",
            euler_plan,
            _euler_ancestral,
            lambda t, eta: True,
            description="Euler ancestral",
            noise_scale_fn=euler_noise_scale,
            default_spacing="linspace",
        ),
        # DPM-Solver++(2M) on Karras sigmas: diffusers DPMSolverMultistepScheduler(use_karras_sigmas=True)
        Sampler(
            "dpmpp_2m_karras",
            karras_plan,
            _dpmpp_2m,
            lambda t, eta: False,
            keeps_history=True,
            description="DPM-Solver++(2M) on Karras sigmas, deterministic",
            grid=None,
            default_spacing="linspace",
        ),
    )
}

SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]  # the API's enum, read from the registry


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}") from None


def sample_loop(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    plan: list[Step],
    *,
    sampler: str,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    noise: Callable[[tuple[int, ...]], Tensor] | None = None,
) -> Tensor:
    """Reference loop: the whole batch walks ``plan`` together. The engine makes the same calls per row.

    ``denoiser(x, t)`` returns the raw network output for a [B] tensor of timesteps; ``noise(shape)``
    draws standard normal noise when a step needs it.
    """
    entry = get_sampler(sampler)
    B = x.shape[0]
    prev_x0 = prev_ab = None

    from torch import float32  # here, not at import: the module stays free of torch for the HTTP layer

    def per_row(value: float) -> Tensor:
        return x.new_full((B,), value, dtype=float32).cpu()

    for step in plan:
        draw = noise is not None and entry.draws_noise(step.t, eta)
        x, x0 = entry.step(
            denoiser(x, per_row(float(step.t))),
            x,
            schedule=schedule,
            ab=per_row(step.ab),
            ab_prev=per_row(step.ab_prev),
            eta=per_row(eta),
            noise=noise(tuple(x.shape)) if draw else None,
            prev_x0=prev_x0 if entry.keeps_history else None,
            prev_ab=prev_ab if entry.keeps_history else None,
        )
        prev_x0, prev_ab = x0, per_row(step.ab)
    return x
