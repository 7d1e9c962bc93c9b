"""What every latent family shares: an AutoencoderKL between image pixels and the network's latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.store.catalog import ModelEntry, ModelRefused
from app.store.loader import LoadedModel


def load_whole(cls: Any, folder, **options) -> Any:
    """``cls.from_pretrained(folder)`` (diffusers or transformers), refused when its weights do not cover the
    network: a missing or misshapen tensor would be left uninitialised, and every image come out wrong."""
    model, info = cls.from_pretrained(folder, output_loading_info=True, **options)
    for kind in ("missing_keys", "mismatched_keys"):
        if found := list(info.get(kind) or []):
            names = ", ".join(str(k if isinstance(k, str) else k[0]) for k in found[:3])
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            raise ModelRefused(f"{folder.name}: the weights lack or misshape {names}{more} ({kind.split('_')[0]})")
    return model


def load_component(entry: ModelEntry, component: str, cls: Any) -> Any:
    """One component with ``load_whole``, from the weights the catalog chose (the plain files, else a variant
    such as fp16; sharded or not), held in float32 whatever the files hold: transformers would otherwise keep
    an fp16 file's precision, which the CPU computes slowly or not at all."""
    weights = entry.weights[component]
    precision = "dtype" if cls.__module__.startswith("transformers") else "torch_dtype"
    options = {"use_safetensors": True, "local_files_only": True, "variant": weights.variant, precision: torch.float32}
    return load_whole(cls, entry.path / component, **options)


@dataclass(eq=False)
class LatentModel(LoadedModel):
    vae: Any = None

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """One image at a time, so memory stays bounded whatever the batch."""
        return self.vae.decode(x / self.vae.config.scaling_factor).sample[0].float()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A sample of the VAE's posterior (the generator's next draw, on the CPU, as diffusers'
        ``latent_dist.sample(generator)``), times the scaling factor."""
        device = next(self.vae.parameters()).device
        posterior = self.vae.encode(pixels.to(device)).latent_dist
        draw = torch.randn(posterior.mean.shape, generator=generator).to(device)
        return (posterior.mean + posterior.std * draw) * self.vae.config.scaling_factor
