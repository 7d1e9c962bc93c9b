"""Load a checked model folder onto a device through its family's runtime module (``FAMILIES[...].runtime``).

Every family's loaded model answers the engine in the same words: ``predict`` (the network's raw output for
a batch of rows, each with its own condition), ``conditions`` (a job's condition and the one guidance pulls
away from), and ``decode`` (a finished row to image pixels in [-1, 1]).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

import torch

from app.diffusion.schedule import NoiseSchedule
from app.jobs import GenerateSpec
from app.store.catalog import ModelEntry, ModelRefused


@dataclass(eq=False)
class LoadedModel:
    entry: ModelEntry
    schedule: NoiseSchedule

    @property
    def name(self) -> str:
        return self.entry.name

    def predict(self, x: torch.Tensor, t: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        """The network's output (eps, v or x_0, as the schedule says) for rows x at timesteps t [B]."""
        raise NotImplementedError

    def conditions(self, spec: GenerateSpec) -> tuple[Any, Any]:
        """(the job's condition, the unconditional one) as ``predict`` takes them."""
        return None, None

    def prepare(self, specs: list[GenerateSpec]) -> None:
        """Work for several jobs arriving together, done at once (a text model encodes their prompts in one
        batch); ``conditions`` then finds it ready."""

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """A finished row [1, C, h, w] to image pixels [C, H, W] in [-1, 1]."""
        return x[0]

    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Image pixels [1, C, H, W] in [-1, 1] to what the network works on (pixel models: themselves)."""
        return pixels


def schedule_of(entry: ModelEntry) -> NoiseSchedule:
    """The model's schedule, clipping as its diffusers pipeline does: not at all where the pipeline turns
    ``clip_sample`` off (Stable Diffusion's: the catalog read the config so, ``scheduler_overrides``); a
    clipping DDIM re-derives its noise estimate from the clipped x_0 on pixel models (ours: docs/digits.md),
    and not on latent ones, as their pipelines step."""
    try:
        schedule = NoiseSchedule.from_config(entry.scheduler_config)
    except ValueError as exc:
        raise ModelRefused(f"scheduler config: {exc}") from exc
    return dataclasses.replace(schedule, clipped_eps=not entry.spec.latent)


def load_model(entry: ModelEntry, device: torch.device) -> LoadedModel:
    runtime = importlib.import_module(entry.spec.runtime)
    return runtime.load(entry, device)
