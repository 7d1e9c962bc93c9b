"""What a diffusers scheduler config must say for the service to follow it, checked without torch: the
model store refuses a folder at scan (and says why in /v1/models) rather than at its first job."""

from __future__ import annotations

from typing import Any

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("linspace", "leading", "trailing")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
MAX_TRAIN_TIMESTEPS = 100_000  # diffusers' models train on 1,000; a schedule this long is a typo


def schedule_problem(config: dict[str, Any]) -> str | None:
    """Why the schedule a scheduler config describes cannot be followed; None when it can."""
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        return f"unknown prediction_type {prediction!r}: expected one of {PREDICTION_TYPES}"
    spacing = config.get("timestep_spacing")
    if spacing is not None and spacing not in SPACINGS:
        return f"unknown timestep_spacing {spacing!r}: expected one of {SPACINGS}"
    if config.get("thresholding"):
        return "dynamic thresholding is not supported"
    variance = config.get("variance_type") or "fixed_small"
    if variance not in ("fixed_small", "fixed_large"):
        return f"variance_type {variance!r} is not supported: expected fixed_small or fixed_large"
    if config.get("rescale_betas_zero_snr"):  # diffusers rescales trained betas too
        return "rescale_betas_zero_snr is not supported"
    trained = config.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, list) or not 1 < len(trained) <= MAX_TRAIN_TIMESTEPS:
            return f"trained_betas must be a list of 2 to {MAX_TRAIN_TIMESTEPS} numbers"
        if not all(_beta(beta) for beta in trained):
            return "trained_betas must be numbers greater than 0 and less than 1"
        steps = len(trained)
        declared = config.get("num_train_timesteps", 1000)  # diffusers' timesteps count on it (its default too)
        if declared != steps:
            return f"trained_betas has {steps} numbers, but num_train_timesteps is {declared!r}: they must agree"
    else:
        kind = config.get("beta_schedule", "linear")
        if kind not in BETA_SCHEDULES:
            return f"unknown beta_schedule {kind!r}: expected {', '.join(BETA_SCHEDULES[:-1])} or {BETA_SCHEDULES[-1]}"
        for name, default in (("beta_start", 0.0001), ("beta_end", 0.02)):
            if not _beta(value := config.get(name, default)):  # Infinity (JSON as Python reads it) gave NaN alphas
                return f"{name} must be a number greater than 0 and less than 1, not {value!r}"
        steps = config.get("num_train_timesteps", 1000)
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 < steps <= MAX_TRAIN_TIMESTEPS:
            return f"num_train_timesteps must be a whole number from 2 to {MAX_TRAIN_TIMESTEPS}, not {steps!r}"
    offset = config.get("steps_offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < steps:
        return f"steps_offset must be a whole number from 0 to {steps - 1}, not {offset!r}"
    return None


def _beta(value: Any) -> bool:
    """A noise variance a schedule can take: a finite number in (0, 1). A first beta of 0 leaves timestep 0
    without noise (sigma 0, which no noise level maps to: a denoise chain started 14x too noisy, euler ended
    in NaN), and a 0 later repeats a noise level, so sigma no longer rises with t."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1
