"""Stable Diffusion 1.x / 2.x folders (StableDiffusionPipeline.save_pretrained): a text-conditioned latent
UNet2DConditionModel, an AutoencoderKL and a CLIP text encoder with its tokenizer, loaded from local
safetensors only. Prompts are encoded once per job, as StableDiffusionPipeline.encode_prompt does; guidance
pulls away from the negative prompt (empty by default) in the same forward pass; latents are decoded one
image at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from app.families.rewrites import faster_modules
from app.jobs import GenerateSpec
from app.store.catalog import ModelEntry, ModelRefused
from app.families.latent import LatentModel, load_component
from app.store.loader import schedule_of


@dataclass(eq=False)
class StableDiffusion(LatentModel):
    unet: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    _encoded: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # from the last prepare

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[N, tokens, width] text embeddings: padded to the tokenizer's length, truncated beyond it, and the
        attention mask passed only where the encoder's config asks for it (as diffusers does)."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        mask = (
            tokens.attention_mask.to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        )
        return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0].float()

    def prepare(self, specs: list[GenerateSpec]) -> None:
        """The prompts and negative prompts of the jobs that arrived together, encoded in one batch."""
        texts = list(dict.fromkeys(t for s in specs for t in (s.prompt or "", s.negative_prompt or "")))
        self._encoded = dict(zip(texts, self.encode_prompts(texts)))

    def conditions(self, spec: GenerateSpec) -> tuple[Any, Any]:
        texts = [spec.prompt or "", spec.negative_prompt or ""]
        missing = [t for t in texts if t not in self._encoded]
        if missing:
            self._encoded.update(zip(missing, self.encode_prompts(missing)))
        return self._encoded[texts[0]], self._encoded[texts[1]]

    def predict(self, x: torch.Tensor, t: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=torch.stack(conds).to(x.dtype)).sample


def load(entry: ModelEntry, device: torch.device) -> StableDiffusion:
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        unet = load_component(entry, "unet", UNet2DConditionModel)
        vae = load_component(entry, "vae", AutoencoderKL)
        text_encoder = load_component(entry, "text_encoder", CLIPTextModel)
        tokenizer = CLIPTokenizer.from_pretrained(entry.path / "tokenizer", local_files_only=True)
    except ModelRefused:
        raise
    except Exception as exc:  # a component that does not load is a refused model, with diffusers' reason
        raise ModelRefused(f"components do not load: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    parts = [m.to(device).eval().requires_grad_(False) for m in (unet, vae, text_encoder)]
    for part in parts[:2]:
        faster_modules(part)  # the same function in fewer multiply-adds and passes (app/families/rewrites.py)
    return StableDiffusion(
        entry=entry,
        schedule=schedule_of(entry),
        unet=parts[0],
        vae=parts[1],
        text_encoder=parts[2],
        tokenizer=tokenizer,
    )
