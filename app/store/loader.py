"""Load a checked model folder's network onto a device: safetensors only, strict keys."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from app.diffusion.schedule import NoiseSchedule
from app.store.card import WEIGHTS_FILE
from app.store.catalog import ModelEntry, ModelRefused


@dataclass
class LoadedModel:
    entry: ModelEntry
    unet: UNet2DModel
    schedule: NoiseSchedule

    @property
    def name(self) -> str:
        return self.entry.name


def load_model(entry: ModelEntry, device: torch.device) -> LoadedModel:
    try:
        schedule = NoiseSchedule.from_config(entry.scheduler_config)
    except ValueError as exc:
        raise ModelRefused(f"scheduler config: {exc}") from exc
    try:
        unet = UNet2DModel.from_config(entry.unet_config)
    except Exception as exc:  # diffusers raises assorted errors for bad configs
        raise ModelRefused(f"unet config: {exc}") from exc
    try:
        state = load_file(entry.path / WEIGHTS_FILE)
    except Exception as exc:
        raise ModelRefused(f"unreadable safetensors weights: {exc}") from exc
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise ModelRefused(f"weights do not fit the unet config: {first}") from exc
    return LoadedModel(entry=entry, unet=unet.to(device).eval().requires_grad_(False), schedule=schedule)
