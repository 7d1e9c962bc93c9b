"""Pixel-space UNet2DModel folders (DDPMPipeline / DDIMPipeline), optionally class-conditional."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from safetensors.torch import load_file

from app.families.rewrites import faster_modules
from app.jobs import GenerateSpec
from app.store.catalog import ModelEntry, ModelRefused
from app.store.loader import LoadedModel, schedule_of


def run_folded(unet: UNet2DModel, x: torch.Tensor, t: torch.Tensor, fold: int, **kwargs: Any) -> torch.Tensor:
    """``unet``'s output on ``x`` when it sees each ``fold`` x ``fold`` block of pixels as channels
    (space to depth, as FFDNet's input), unfolded back to the image's shape; ``fold`` 1 is a plain call."""
    if fold == 1:
        return unet(x, t, **kwargs).sample
    return F.pixel_shuffle(unet(F.pixel_unshuffle(x, fold), t, **kwargs).sample, fold)


@dataclass(eq=False)
class PixelModel(LoadedModel):
    unet: UNet2DModel = None

    def conditions(self, spec: GenerateSpec) -> tuple[Any, Any]:
        return spec.class_label, self.entry.null_class  # None: unconditional (the null class)

    def predict(self, x: torch.Tensor, t: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        labels = None
        if self.entry.num_classes:
            null = self.entry.null_class
            if null is None and any(c is None for c in conds):  # the API refuses such requests first
                raise ValueError(f"model {self.name!r} needs a class label on every row: it has no null class")
            labels = torch.tensor([null if c is None else c for c in conds], device=x.device)
        return run_folded(self.unet, x, t, self.entry.fold, class_labels=labels)


def load(entry: ModelEntry, device: torch.device) -> PixelModel:
    schedule = schedule_of(entry)
    try:
        unet = UNet2DModel.from_config(entry.denoiser_config)
    except Exception as exc:  # diffusers raises assorted errors for bad configs
        raise ModelRefused(f"unet config: {exc}") from exc
    try:
        state = {}  # the file, or each shard (the catalog chose them: app/store/weights.py)
        for name in entry.weights["unet"].files:
            state.update(load_file(entry.path / "unet" / name))
    except Exception as exc:
        raise ModelRefused(f"unreadable safetensors weights: {exc}") from exc
    if len(entry.weights["unet"].files) == 1:  # as from_pretrained: only unsharded files are that old
        unet._fix_state_dict_keys_on_load(state)  # diffusers' renaming of pre-0.12 attention weights (query ...)
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise ModelRefused(f"weights do not fit the unet config: {first}") from exc
    # channels-last: the convolutions' fast layout (on 2 CPU cores the photo denoiser runs 1.2x faster in
    # float32 and 1.2x in bf16, the same PSNR: bench/bench_denoise_speed.py)
    unet = unet.to(device, memory_format=torch.channels_last)
    faster_modules(unet)  # the same function in fewer multiply-adds and passes (app/families/rewrites.py)
    return PixelModel(entry=entry, schedule=schedule, unet=unet.eval().requires_grad_(False))
