"""DiT folders (DiTPipeline.save_pretrained): a class-conditional latent transformer and an AutoencoderKL.

As DiTPipeline: the null label is class 1000 (``num_embeds_ada_norm``), guidance applies to the predicted
noise (the first latent channels; a transformer that also predicts its variance returns twice as many, and
the rest is dropped), and latents are decoded one image at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, Transformer2DModel

from app.families.rewrites import faster_modules
from app.jobs import GenerateSpec
from app.store.catalog import ModelEntry, ModelRefused
from app.families.latent import LatentModel, load_component
from app.store.loader import schedule_of


@dataclass(eq=False)
class DiT(LatentModel):
    transformer: Any = None

    def conditions(self, spec: GenerateSpec) -> tuple[Any, Any]:
        return spec.class_label, self.entry.null_class

    def predict(self, x: torch.Tensor, t: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        null = self.entry.null_class
        labels = torch.tensor([null if c is None else c for c in conds], device=x.device)
        out = self.transformer(x, timestep=t, class_labels=labels).sample
        channels = x.shape[1]
        return out[:, :channels] if out.shape[1] == 2 * channels else out


def load(entry: ModelEntry, device: torch.device) -> DiT:
    cls = (
        DiTTransformer2DModel
        if entry.denoiser_config.get("_class_name") == "DiTTransformer2DModel"
        else Transformer2DModel
    )
    try:
        transformer = load_component(entry, "transformer", cls)
        vae = load_component(entry, "vae", AutoencoderKL)
    except ModelRefused:
        raise
    except Exception as exc:
        raise ModelRefused(f"components do not load: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    vae = vae.to(device).eval().requires_grad_(False)
    faster_modules(vae)  # the same function in fewer multiply-adds and passes (app/families/rewrites.py)
    return DiT(
        entry=entry,
        schedule=schedule_of(entry),
        transformer=transformer.to(device).eval().requires_grad_(False),
        vae=vae,
    )
