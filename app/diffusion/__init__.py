"""Diffusion math: schedules, the forward process, per-row sampler steps. Pure functions, no I/O."""
