"""Tiny diffusers models for tests: random weights, a few thousand parameters, saved in the store layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from app.store.card import ModelCard, SamplingDefaults
from app.store.writer import save_model


def tiny_unet(
    *, channels: int = 1, size: int = 16, num_class_embeds: int | None = None, seed: int = 0, attention: bool = True
) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
        add_attention=attention,  # the middle block's (the only attention layer)
    ).eval()


def float32_bytes_of(path: Path) -> int:
    """The memory a safetensors file's tensors take once loaded, floating ones as float32 (by loading it)."""
    from safetensors.torch import load_file

    tensors = load_file(path).values()
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in tensors)


def tiny_scheduler(**overrides) -> DDPMScheduler:
    config = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    config.update(overrides)
    return DDPMScheduler(**config)


def write_generator(folder: Path, *, classes: int = 3, size: int = 16, steps: int = 4) -> Path:
    """A class-conditional generator with a card: classes 'a', 'b', 'c' and a null class for guidance."""
    card = ModelCard(
        description="tiny test generator",
        tasks=["generate"],
        class_names=[chr(ord("a") + i) for i in range(classes)],
        null_class=classes,
        image_size=(size, size),
        channels=1,
        defaults=SamplingDefaults(sampler="ddim", steps=steps, guidance_scale=0.0),
    )
    unet = tiny_unet(size=size, num_class_embeds=classes + 1)
    return save_model(folder, unet=unet, scheduler=tiny_scheduler(), card=card)


def write_bare(folder: Path, *, channels: int = 3, size: int = 16, attention: bool = True) -> Path:
    """A plain diffusers folder with no card: serves both tasks with defaults from its configs."""
    unet = tiny_unet(channels=channels, size=size, seed=1, attention=attention)
    return save_model(folder, unet=unet, scheduler=tiny_scheduler(), card=None)


def write_conditional_bare(folder: Path, *, classes: int = 4, size: int = 16) -> Path:
    """A class-conditional RGB model saved as DDPMPipeline.save_pretrained writes it: no card, no null class."""
    unet = tiny_unet(channels=3, size=size, num_class_embeds=classes, seed=2)
    return save_model(folder, unet=unet, scheduler=tiny_scheduler(), card=None)


def write_conditional_with_null(folder: Path, *, classes: int = 3, size: int = 16) -> Path:
    """A class-conditional RGB model whose card names a null class and both tasks: it can denoise, unlabelled."""
    card = ModelCard(
        tasks=["generate", "denoise"],
        null_class=classes,
        image_size=(size, size),
        channels=3,
        defaults=SamplingDefaults(sampler="ddim", steps=4),
    )
    unet = tiny_unet(channels=3, size=size, num_class_embeds=classes + 1, seed=3)
    return save_model(folder, unet=unet, scheduler=tiny_scheduler(), card=card)


def write_folded(folder: Path, *, size: int = 16) -> Path:
    """An RGB model whose network sees each 2x2 block of pixels as 12 channels (space to depth), both tasks."""
    card = ModelCard(tasks=["generate", "denoise"], channels=3, space_to_depth=2, defaults=SamplingDefaults(steps=4))
    return save_model(folder, unet=tiny_unet(channels=12, size=size, seed=5), scheduler=tiny_scheduler(), card=card)


# -- latent families: tiny Stable Diffusion and DiT folders, as their pipelines' save_pretrained writes them --
def tiny_vae(seed: int = 4):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=4,
        sample_size=16,
    ).eval()


def _byte_characters() -> list[str]:
    """The 256 characters byte-level BPE uses for the bytes (GPT-2's table: printable bytes as themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_tokenizer():
    """A byte-level CLIP tokenizer with no merges: every character is a token."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in _byte_characters():
            vocab.setdefault(char + suffix, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def clip_text_encoder(tokenizer, *, width: int, layers: int, heads: int, positions: int):
    """A CLIP text encoder for ``tokenizer`` (random weights), ``width`` wide, as CLIP's (MLP 4x wide)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=positions,
        projection_dim=width,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def write_stable_diffusion(
    folder: Path,
    *,
    prediction_type: str = "epsilon",
    spacing: str | None = "leading",
    inpainting: bool = False,
    clip_sample: bool = False,
    levels: int = 2,
) -> Path:
    """A tiny StableDiffusionPipeline folder: 16x16 images (8x8 latents), a 1-layer CLIP text encoder; with
    ``inpainting`` a StableDiffusionInpaintPipeline folder (a UNet with 9 input channels); with ``spacing``
    None its scheduler config names no timestep spacing, as configs saved before diffusers 0.16 (SD 1.x's);
    ``levels`` > 2 adds UNet levels (each halves the latents once more, as SD's four do)."""
    from diffusers import UNet2DConditionModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(5)
    text_encoder = clip_text_encoder(tokenizer, width=16, layers=1, heads=2, positions=16)
    torch.manual_seed(6)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9 if inpainting else 4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8,) + (16,) * (levels - 1),
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (levels - 1),
        up_block_types=("UpBlock2D",) * (levels - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    ).eval()
    scheduler = sd_scheduler(prediction_type=prediction_type, timestep_spacing=spacing or "leading")
    save_stable_diffusion(
        folder,
        unet=unet,
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        inpainting=inpainting,
    )
    if spacing is None:
        edit_scheduler_config(folder, timestep_spacing=None)
    if clip_sample:  # written after saving: StableDiffusionPipeline turns it off in the scheduler it is given
        edit_scheduler_config(folder, clip_sample=True)
    return folder


def edit_scheduler_config(folder: Path, **changes) -> None:
    """Change keys of a saved folder's scheduler config (None: remove the key)."""
    path = folder / "scheduler" / "scheduler_config.json"
    config = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}, indent=2))


def sd_scheduler(**overrides):
    """Stable Diffusion 1.x's DDIM scheduler config (scaled linear betas, steps_offset 1, no clipping)."""
    from diffusers import DDIMScheduler

    config = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return DDIMScheduler(**{**config, **overrides})


def save_stable_diffusion(folder: Path, *, unet, vae, text_encoder, tokenizer, scheduler, inpainting=False) -> Path:
    """Components saved as StableDiffusion(Inpaint)Pipeline.save_pretrained writes them, no safety checker."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    pipeline = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder, safe_serialization=True)
    return folder


def write_stable_diffusion_as(folder: Path, *, dtype: torch.dtype, **layout) -> Path:
    """``write_stable_diffusion``'s model saved by diffusers in another layout: ``dtype`` weights, with
    save_pretrained's ``variant`` and ``max_shard_size`` (fp16 shards, as Hugging Face snapshots hold)."""
    from diffusers import StableDiffusionPipeline

    source = write_stable_diffusion(folder.parent / f".{folder.name}-source")  # hidden: not scanned as a model
    pipe = StableDiffusionPipeline.from_pretrained(
        source, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.to(dtype).save_pretrained(folder, safe_serialization=True, **layout)
    return folder


def write_dit(folder: Path, *, clip_sample: bool = False) -> Path:
    """A tiny DiTPipeline folder: 16x16 images (8x8 latents, patches of 2), 1000 classes + the null class."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(7)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_num_groups=4,
    ).eval()
    scheduler = DDIMScheduler(clip_sample=clip_sample)
    DiTPipeline(transformer=transformer, vae=tiny_vae(seed=8), scheduler=scheduler).save_pretrained(
        folder, safe_serialization=True
    )
    return folder
