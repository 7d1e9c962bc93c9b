"""The model card: our own ``model_card.json`` beside the diffusers folders (no torch here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.diffusion.samplers import SamplerName

Task = Literal["generate", "denoise"]

CARD_FILE = "model_card.json"
WEIGHTS_FILE = "unet/diffusion_pytorch_model.safetensors"


class SamplingDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sampler: SamplerName = "ddim"
    steps: int = Field(50, ge=1, le=1000)
    guidance_scale: float = Field(0.0, ge=0.0)
    eta: float = Field(0.0, ge=0.0, le=1.0)


class ModelCard(BaseModel):
    """What a model serves and how; every field is optional so a bare diffusers folder still works."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    description: str = ""
    tasks: list[Task] = Field(default_factory=lambda: ["generate", "denoise"], min_length=1)
    class_names: list[str] | None = None
    null_class: int | None = Field(None, ge=0, description="class index used as the unconditional label")
    image_size: tuple[int, int] | None = None
    channels: int | None = Field(None, ge=1, le=4)
    space_to_depth: int = Field(
        1,
        ge=1,
        le=8,
        description="a pixel network that sees each k x k block of pixels as channels (k > 1): its UNet has "
        "k*k times the image's channels in and out, and images are folded and unfolded around it",
    )
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)
    sha256: dict[str, str] = Field(default_factory=dict, description="relative path -> hex digest")
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_null_class(self) -> "ModelCard":
        if self.null_class is not None and self.class_names is not None and self.null_class < len(self.class_names):
            raise ValueError("null_class must not be the index of a named class")
        return self
