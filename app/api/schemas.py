"""Request and response bodies of the HTTP API (pydantic v2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.store.catalog import NAME_PATTERN

Sampler = Literal["ddpm", "ddim", "dpmpp_2m"]
OutputFormat = Literal["png", "jpeg", "webp"]
SEED_MAX = 2**63 - 1


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class GenerateRequest(_Request):
    model: str | None = Field(None, pattern=NAME_PATTERN, description="model name; default: the store's default generator")
    num_images: int = Field(1, ge=1, le=16)
    steps: int | None = Field(None, ge=1, le=1000, description="default: the model card's")
    sampler: Sampler | None = Field(None, description="default: the model card's")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="DDIM noise scale (0: deterministic)")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="image i uses seed + i; default: random")
    class_label: int | str | None = Field(None, description="class index or class name")
    guidance_scale: float | None = Field(
        None, ge=0.0, le=20.0, description="classifier-free guidance w: (1+w) cond - w uncond; 0 = off"
    )
    output_format: OutputFormat | None = Field(None, description="png (default), jpeg or webp")

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [{"class_label": 7, "num_images": 1, "seed": 42}]},
    )


class DenoiseParams(_Request):
    """Denoising options; the image comes as a multipart ``file`` or as base64 in ``image`` (JSON)."""

    model: str | None = Field(None, pattern=NAME_PATTERN, description="default: the store's default denoiser")
    sigma: float | Literal["auto"] = Field(
        "auto", description="noise std on the 0-255 scale, or 'auto' to estimate it from the image"
    )
    mode: Literal["mmse", "sample"] = Field("mmse", description="mmse: posterior mean (one network call); sample: reverse diffusion")
    steps: int | None = Field(None, ge=1, le=1000, description="sample mode: reverse steps from the matched timestep; default: the model card's")
    sampler: Sampler | None = Field(None, description="sample mode sampler; default: the model card's")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="sample mode, DDIM noise scale; default: the model card's")
    samples: int = Field(
        1, ge=1, le=16, description="sample mode: average this many reverse-diffusion samples (seeds seed, seed+1, ...)"
    )
    ensemble: int = Field(
        1, ge=1, le=8,
        description="average over this many flips/rotations of the image (2: + mirror, 4: + quarter turn, 8: all); "
        "a little better PSNR, that many times the compute",
    )
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    output_format: OutputFormat | None = None


class DenoiseJSON(DenoiseParams):
    image: str = Field(..., description="the image file (PNG, JPEG, WebP, ...) as base64")


class NoiseParams(_Request):
    """Forward process: add seeded Gaussian noise at ``sigma`` (0-255 scale), or q(x_t | x_0) at ``timestep``."""

    model: str | None = Field(None, pattern=NAME_PATTERN, description="whose schedule a timestep refers to")
    sigma: float | None = Field(None, gt=0.0, le=1000.0)
    timestep: int | None = Field(None, ge=0, le=10000)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    output_format: OutputFormat | None = None


class NoiseJSON(NoiseParams):
    image: str = Field(..., description="the image file as base64")


class ImageOut(BaseModel):
    index: int
    seed: int | None
    media_type: str
    url: str
    data: str | None = Field(None, description="base64 of the image file")


class JobOut(BaseModel):
    job_id: str
    status: str
    kind: str | None = None
    model: str | None = None
    progress: dict | None = None
    images: list[ImageOut] | None = None
    info: dict | None = None
    timings: dict | None = None
    error: str | None = None
