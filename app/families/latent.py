"""What every latent family shares: an AutoencoderKL between image pixels and the network's latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.store.loader import LoadedModel


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
