"""Request and response bodies of the HTTP API (pydantic v2). Every route declares its response model and
its error bodies from here, so ``/openapi.json`` describes every answer (snapshot: ``openapi.json``)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from app.diffusion.samplers import SamplerName
from app.imaging import OutputFormat
from app.jobs import JobRecord, JobStatus, Priority, WebhookEvent
from app.store.catalog import NAME_PATTERN

SEED_MAX = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX, json_schema_extra={"maximum": SEED_MAX})]  # an exact integer
ModelName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


class _Request(BaseModel):
    # NaN and infinities are refused as such ("Input should be a finite number"), not by a bound they fail
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic's lax mode reads JSON ``true`` as 1 (``"class_label": true`` as class 1): refused where
        the field is not a boolean."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            raise ValueError(f"{info.field_name} takes no boolean")
        return value


def _comma_separated(value: Any) -> Any:
    """A form field carries a list as one string: "started,completed"."""
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class _JobRequest(_Request):
    """What every job-creating request may carry besides its own fields."""

    webhook: str | None = Field(
        None,
        max_length=2048,
        description="an http(s) URL that receives the job's events as signed POSTs (Standard Webhooks; the body "
        "is the job as GET /v1/jobs/{id} returns it); its host must resolve to public addresses",
    )
    webhook_events: Annotated[list[WebhookEvent], BeforeValidator(_comma_separated)] = Field(
        default_factory=lambda: ["completed"],
        min_length=1,
        max_length=2,
        description="which events to send: started, completed (any final status); default completed",
    )


JOB_FIELDS = frozenset(_JobRequest.model_fields)  # about the job, not the model: every model takes them


# -- requests ------------------------------------------------------------------------------------------
class GenerateRequest(_JobRequest):
    model: ModelName | None = Field(None, description="model name; default: the store's default generator")
    num_images: int = Field(1, ge=1, le=16)
    steps: int | None = Field(None, ge=1, le=1000, description="default: the model card's")
    sampler: SamplerName | None = Field(None, description="default: the model card's")
    eta: float | None = Field(
        None, ge=0.0, le=1.0, description="DDIM noise scale (0: deterministic); sampler ddim only, else a 422"
    )
    seed: Seed | None = Field(None, description="image i uses seed + i; default: random")
    class_label: int | str | None = Field(
        None, description="class index or class name; omitted on a model with a null class: unconditional"
    )
    prompt: str | None = Field(None, max_length=4000, description="text-conditioned models: what to draw")
    negative_prompt: str | None = Field(
        None, max_length=4000, description="text-conditioned models: what guidance steers away from (default empty)"
    )
    width: int | None = Field(None, ge=8, le=16384, description="latent text models: image width (default: native)")
    height: int | None = Field(None, ge=8, le=16384, description="latent text models: image height (default: native)")
    guidance_scale: float | None = Field(
        None, ge=0.0, le=20.0, description="classifier-free guidance w: (1+w) cond - w uncond; 0 = off"
    )
    output_format: OutputFormat | None = Field(None, description="png (default), jpeg or webp")
    priority: Priority | None = Field(
        None,
        description="low, normal or high: who joins the batch first, and twice the device time per level beside "
        "other models or shapes (default: normal, or the key's cap if lower)",
    )
    preview_every: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="every k steps the job's event stream (GET /v1/jobs/{id}/events) carries a `preview` event: "
        "the current estimate of each clean image, at most 128 pixels a side, WebP base64",
    )

    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={"examples": [{"class_label": 7, "num_images": 1, "seed": 42}]},
    )


class Img2ImgParams(GenerateRequest):
    """Generation from an image (multipart ``file``, or base64 ``image`` in JSON): the image is noised to
    ``strength`` of the way into the chain (1: almost pure noise), then the chain runs from there. An optional
    ``mask`` (white = repaint) keeps the rest of the image: inpainting."""

    strength: float = Field(0.75, gt=0.0, le=1.0, description="how far into the chain the image is noised")

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Img2ImgJSON(Img2ImgParams):
    image: str = Field(..., description="the image file as base64")
    mask: str | None = Field(None, description="inpainting: the mask file as base64 (white = repaint)")


class DenoiseParams(_JobRequest):
    """Denoising options; the image comes as a multipart ``file`` or as base64 in ``image`` (JSON)."""

    model: ModelName | None = Field(None, description="default: the store's default denoiser")
    sigma: float | Literal["auto"] = Field(
        "auto", description="noise std on the 0-255 scale, in (0, 255], or 'auto' to estimate it from the image"
    )
    mode: Literal["mmse", "sample"] = Field(
        "mmse", description="mmse: posterior mean (one network call); sample: reverse diffusion"
    )
    steps: int | None = Field(
        None, ge=1, le=1000, description="sample mode: reverse steps from the matched timestep; default: the card's"
    )
    sampler: SamplerName | None = Field(None, description="sample mode sampler; default: the model card's")
    eta: float | None = Field(
        None, ge=0.0, le=1.0, description="sample mode, DDIM noise scale (sampler ddim only); default: the card's"
    )
    samples: int = Field(
        1, ge=1, le=16, description="sample mode: average this many reverse-diffusion samples (seeds seed, seed+1, ...)"
    )
    ensemble: int = Field(
        1,
        ge=1,
        le=8,
        description="average over this many flips/rotations of the image (2: + mirror, 4: + quarter turn, 8: all); "
        "a little better PSNR, that many times the compute",
    )
    seed: Seed | None = None
    output_format: OutputFormat | None = None
    priority: Priority | None = Field(
        None,
        description="low, normal or high: who joins the batch first, and twice the device time per level beside "
        "other models or shapes (default: normal, or the key's cap if lower)",
    )


class DenoiseJSON(DenoiseParams):
    image: str = Field(..., description="the image file (PNG, JPEG, WebP, ...) as base64")


class NoiseParams(_JobRequest):
    """Forward process: add seeded Gaussian noise at ``sigma`` (0-255 scale), or q(x_t | x_0) at ``timestep``."""

    model: ModelName | None = Field(None, description="whose schedule a timestep refers to")
    sigma: float | None = Field(None, gt=0.0, le=1000.0)
    timestep: int | None = Field(None, ge=0, le=10000)
    seed: Seed | None = None
    output_format: OutputFormat | None = None


class NoiseJSON(NoiseParams):
    image: str = Field(..., description="the image file as base64")


# -- responses -----------------------------------------------------------------------------------------
class ErrorItem(BaseModel):
    loc: list[str | int] = Field(..., description="where the fault is: body/header/path/query, then the field")
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: list[ErrorItem]


class ProgressOut(BaseModel):
    step: int
    total: int


class Timings(BaseModel):
    queued_ms: float
    run_ms: float
    total_ms: float
    compute_ms: float | None = Field(None, description="the engine's time on the job, once it has finished")


class ImageOut(BaseModel):
    index: int
    seed: int | None = Field(..., description="the seed that drew this image (None for mmse denoising)")
    media_type: str
    url: str = Field(..., description="the image as raw bytes")
    data: str | None = Field(None, description="base64 of the image file")


class JobOut(BaseModel):
    job_id: str
    status: JobStatus
    kind: str
    model: str | None
    progress: ProgressOut
    timings: Timings
    images: list[ImageOut] | None = None
    info: dict[str, Any] | None = Field(
        None,
        description="what the job found or changed: denoise sigma, tiles; an upload's alpha_dropped, "
        "frames_dropped, exif_orientation; img2img steps_run",
    )
    error: str | None = None
    request_id: str | None = Field(None, description="the X-Request-ID of the request that created the job")


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus


class ModelOut(BaseModel):
    name: str
    status: Literal["ready", "error"]
    loaded: bool = Field(False, description="in an engine's memory now (else it loads on first use)")
    weights_gb: float = Field(0.0, description="the weights' size: the memory they take")
    weights: dict[str, str] = Field(
        default_factory=dict,
        description="each component's weights that are loaded: the file, or a sharded one's index and its count "
        "of shards (a variant such as fp16 where the folder has no plain file)",
    )
    error: str | None = Field(None, description="why the model is not served")
    workers: int | None = Field(
        None,
        description="with Redis: the workers serving it now (heard from within 3 heartbeats); 0 while none is, "
        "when its jobs wait for one to come back",
    )
    card: dict[str, Any] | None = Field(
        None, description="the model card with what the configs imply: tasks it really serves, image size, ..."
    )


class ModelList(BaseModel):
    models: list[ModelOut]


class Health(BaseModel):
    status: Literal["ok", "engine stopped"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    models: list[str]


# -- rendering -----------------------------------------------------------------------------------------
def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def job_body(record: JobRecord, *, include_data: bool = True) -> dict:
    body: dict = {
        "job_id": record.id,
        "status": record.status.value,
        "kind": record.kind,
        "model": record.model,
        "progress": record.progress.model_dump(),
        "timings": record.timings(),
        "request_id": record.request_id,
    }
    if record.result is not None:
        body["images"] = [
            {
                "index": image.index,
                "seed": image.seed,
                "media_type": image.media_type,
                "url": f"{job_url(record.id)}/images/{image.index}",
                **({"data": base64.b64encode(image.data).decode()} if include_data else {}),
            }
            for image in record.result.images
        ]
        body["info"] = record.result.info
        body["timings"]["compute_ms"] = record.result.run_ms
    if record.error:
        body["error"] = record.error
    return body
