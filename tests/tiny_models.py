"""Tiny diffusers models for tests: random weights, a few thousand parameters, saved in the store layout."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from app.store.card import ModelCard, SamplingDefaults
from app.store.writer import save_model


def tiny_unet(*, channels: int = 1, size: int = 16, num_class_embeds: int | None = None, seed: int = 0) -> UNet2DModel:
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
    ).eval()


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


def write_bare(folder: Path, *, channels: int = 3, size: int = 16) -> Path:
    """A plain diffusers folder with no card: serves both tasks with defaults from its configs."""
    return save_model(
        folder, unet=tiny_unet(channels=channels, size=size, seed=1), scheduler=tiny_scheduler(), card=None
    )


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
