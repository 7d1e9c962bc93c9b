"""The runner: holds every admitted row's tensors and runs one forward pass plus one sampler step for
a batch of rows chosen by the scheduler. It never decides who is admitted."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from app.diffusion.samplers import cfg_combine, needs_noise, sampler_step
from app.diffusion.schedule import Step
from app.store.loader import LoadedModel


@dataclass(eq=False)
class Row:
    """One image (or one tile) walking its own plan, with its own noise generator and sampler state."""

    id: int
    job_id: str
    model: LoadedModel
    x: torch.Tensor  # [1, C, H, W] on the device, float32
    plan: list[Step]
    sampler: str
    generator: torch.Generator
    eta: float = 0.0
    label: int | None = None
    guidance: float = 0.0
    index: int = 0
    prev_x0: torch.Tensor | None = None
    prev_ab: float = math.nan
    output: torch.Tensor | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.index >= len(self.plan)

    @property
    def guided(self) -> bool:
        return self.guidance > 0

    @property
    def group(self) -> tuple:
        return (self.model.name, tuple(self.x.shape[1:]))

    def noise(self) -> torch.Tensor:
        """Standard normal noise from this row's own generator (CPU, so seeds give the same draws on any
        device), moved to the row's device."""
        return torch.randn(self.x.shape, generator=self.generator).to(self.x.device)


class Runner:
    def __init__(self, device: torch.device, autocast_dtype: torch.dtype | None) -> None:
        self.device = device
        self.autocast_dtype = autocast_dtype

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def denoiser_output(self, rows: list[Row]) -> torch.Tensor:
        """The network output for each row at its current timestep, guidance applied: one forward pass,
        with the guided rows' null-label copies appended to the batch."""
        model = rows[0].model
        x = torch.cat([r.x for r in rows])
        t = torch.tensor([r.plan[r.index].t for r in rows], dtype=torch.float32, device=self.device)
        guided = [i for i, r in enumerate(rows) if r.guided]
        labels = None
        if model.entry.num_classes:
            null = model.entry.card.null_class
            labels = torch.tensor([null if r.label is None else r.label for r in rows], device=self.device)
        if guided:
            idx = torch.tensor(guided, device=self.device)
            x = torch.cat([x, x[idx]])
            t = torch.cat([t, t[idx]])
            labels = torch.cat([labels, torch.full((len(guided),), model.entry.card.null_class, device=self.device)])
        with self._autocast():
            out = model.unet(x, t, class_labels=labels).sample.float()
        main = out[: len(rows)]
        if guided:
            idx = torch.tensor(guided, device=self.device)
            scale = torch.tensor([rows[i].guidance for i in guided], dtype=torch.float32, device=self.device)
            main = main.index_copy(0, idx, cfg_combine(main[idx], out[len(rows) :], scale))
        return main

    @torch.no_grad()
    def step(self, rows: list[Row]) -> list[Row]:
        """Advance every row by one step of its own sampler; returns the rows that reached the end."""
        output = self.denoiser_output(rows)
        schedule = rows[0].model.schedule
        updates = []  # applied only once every sub-batch has succeeded, so a failed step changes no row
        for sampler in dict.fromkeys(r.sampler for r in rows):
            members = [i for i, r in enumerate(rows) if r.sampler == sampler]
            subset = [rows[i] for i in members]
            steps = [r.plan[r.index] for r in subset]

            def per_row(values: list[float]) -> torch.Tensor:
                return torch.tensor(values, dtype=torch.float32, device=self.device)

            draws = [needs_noise(sampler, t=s.t, eta=r.eta) for r, s in zip(subset, steps)]
            noise = None
            if any(draws):
                noise = torch.cat([r.noise() if d else torch.zeros_like(r.x) for r, d in zip(subset, draws)])
            prev = None
            if sampler == "dpmpp_2m" and any(r.prev_x0 is not None for r in subset):
                prev = torch.cat([r.x * 0 if r.prev_x0 is None else r.prev_x0 for r in subset])
            x_next, x0 = sampler_step(
                sampler,
                output[members],
                torch.cat([r.x for r in subset]),
                schedule=schedule,
                ab=per_row([s.ab for s in steps]),
                ab_prev=per_row([s.ab_prev for s in steps]),
                eta=per_row([r.eta for r in subset]),
                noise=noise,
                prev_x0=prev,
                prev_ab=per_row([r.prev_ab for r in subset]),
            )
            for j, (r, s) in enumerate(zip(subset, steps)):
                keep = sampler == "dpmpp_2m"
                updates.append((r, x_next[j : j + 1], x0[j : j + 1] if keep else None, s.ab if keep else math.nan))
        for row, x, prev_x0, prev_ab in updates:
            row.x, row.prev_x0, row.prev_ab = x, prev_x0, prev_ab
            row.index += 1
        return [r for r in rows if r.done]
