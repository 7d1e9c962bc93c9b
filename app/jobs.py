"""Jobs as every layer sees them: fully resolved specs (every default filled in by the API), records,
and results. Plain pydantic, JSON-serialisable (bytes as base64), so any backend can store them."""

from __future__ import annotations

import base64
import time
import uuid
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from app.diffusion.layout import DenoiseLayout
from app.diffusion.samplers import SamplerName  # the registry's names (no torch)
from app.imaging import OutputFormat
from app.logs import request_id


Priority = Literal["low", "normal", "high"]
PRIORITY_LEVEL = {"low": 0, "normal": 1, "high": 2}
DEFAULT_PRIORITY = "normal"  # the priority of a request that asks for none (its key's cap, if lower)
PRIORITY_AGING_S = 60.0  # a job that has waited this long is served as one level higher, and so on


def aged_level(level: int, waited_s: float, aging_s: float = PRIORITY_AGING_S) -> int:
    """A priority level raised by one for every ``aging_s`` seconds waited (up to high): nothing starves."""
    return min(PRIORITY_LEVEL["high"], level + int(max(0.0, waited_s) // aging_s))


WebhookEvent = Literal["started", "completed"]


class _Model(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), ser_json_bytes="base64", val_json_bytes="base64")


class ImageData(_Model):
    """A decoded upload: uint8 pixels, row-major [height, width, channels]."""

    width: int
    height: int
    channels: Literal[1, 3]
    pixels: bytes
    alpha_dropped: bool = False
    transparent: bool = Field(
        False, description="a mask's: some pixel was not fully opaque before the alpha was dropped"
    )
    frames_dropped: int = Field(0, ge=0, description="frames of an animation beyond the first, ignored")
    exif_orientation: int = Field(1, ge=1, le=8, description="the EXIF orientation the pixels were turned by")
    icc_profile: bytes | None = Field(None, description="the upload's ICC colour profile, given back with its results")

    @property
    def area(self) -> int:
        return self.width * self.height


class GenerateSpec(_Model):
    kind: Literal["generate"] = "generate"
    model: str
    steps: int
    sampler: SamplerName
    eta: float = 0.0
    seeds: list[int]
    class_label: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    width: int | None = Field(None, description="image width; None: the model's native size")
    height: int | None = None
    guidance_scale: float = 0.0
    output_format: OutputFormat = "png"
    pixels: int = Field(0, ge=0, description="the images' pixels (admission counts them)")
    priority: Priority = "normal"
    preview_every: int = Field(0, ge=0, description="a preview of the clean-image estimate every k steps; 0: none")

    @property
    def total_steps(self) -> int:
        return self.steps

    @property
    def image_count(self) -> int:
        return len(self.seeds)


def img2img_steps(steps: int, strength: float) -> int:
    """The steps an img2img job runs: the last ``steps x strength`` of its chain, at least one (diffusers' rule)."""
    return max(1, min(int(steps * strength), steps))


class Img2ImgSpec(GenerateSpec):
    """Generation that starts from an image: its latent (or pixels) noised to the timestep ``strength`` of
    the way into the chain, then the rest of the chain. ``mask`` (white = repaint) keeps the rest of the
    image: inpainting."""

    kind: Literal["img2img"] = "img2img"  # type: ignore[assignment]
    image: ImageData
    strength: float = Field(0.75, gt=0, le=1)
    mask: ImageData | None = None

    @property
    def total_steps(self) -> int:
        return img2img_steps(self.steps, self.strength)


class DenoiseSpec(_Model):
    kind: Literal["denoise"] = "denoise"
    model: str
    image: ImageData
    sigma: float | None = Field(None, description="noise std on the 0-255 scale; None: estimate it")
    mode: Literal["mmse", "sample"] = "mmse"
    steps: int = 1
    sampler: SamplerName = "ddim"
    eta: float = 0.0
    samples: int = Field(1, ge=1, description="sample mode: reverse-diffusion samples averaged")
    ensemble: int = Field(1, ge=1, le=8, description="flipped/rotated copies of the image averaged")
    seed: int = 0
    output_format: OutputFormat = "png"
    priority: Priority = "normal"

    @property
    def total_steps(self) -> int:
        return 1 if self.mode == "mmse" else self.steps

    @property
    def pixels(self) -> int:
        return self.image.area

    def layout(self, *, model_channels: int, factor: int, tile: int, overlap: int) -> DenoiseLayout:
        """The job's rows (views x planes x tiles) on a model with ``model_channels`` and downsampling
        ``factor``: the API prices the request with it, the engine builds the rows from it."""
        return DenoiseLayout.of(
            height=self.image.height,
            width=self.image.width,
            image_channels=self.image.channels,
            model_channels=model_channels,
            factor=factor,
            tile=tile,
            overlap=overlap,
            samples=self.samples if self.mode == "sample" else 1,
            ensemble=self.ensemble,
        )

    @property
    def image_count(self) -> int:
        return 1  # one result image


class NoiseSpec(_Model):
    kind: Literal["noise"] = "noise"
    model: str | None = None
    image: ImageData
    sigma: float | None = None
    timestep: int | None = None
    seed: int = 0
    output_format: OutputFormat = "png"

    @property
    def total_steps(self) -> int:
        return 0

    @property
    def pixels(self) -> int:
        return self.image.area

    @property
    def image_count(self) -> int:
        return 1  # one result image


JobSpec = Annotated[Union[GenerateSpec, Img2ImgSpec, DenoiseSpec, NoiseSpec], Field(discriminator="kind")]


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class Progress(_Model):
    step: int = 0
    total: int = 0


class ResultImage(_Model):
    index: int
    seed: int | None
    media_type: str
    data: bytes


class JobResult(_Model):
    images: list[ResultImage]
    info: dict[str, Any] = Field(default_factory=dict)
    run_ms: float = 0.0


class Webhook(_Model):
    """Where to announce a job's events (checked by the API; delivered by app.api.webhooks)."""

    url: str
    events: list[WebhookEvent] = Field(default_factory=lambda: ["completed"])


class JobRecord(_Model):
    id: str
    kind: str
    model: str | None
    status: JobStatus = JobStatus.queued
    progress: Progress = Field(default_factory=Progress)
    pixels: int = Field(0, description="image pixels the job holds while queued or running (admission counts it)")
    owner: str | None = Field(None, description="the API key's name that created the job (None: open service)")
    request_id: str | None = Field(None, description="the X-Request-ID of the request that created the job")
    webhook: Webhook | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: JobResult | None = None

    @classmethod
    def new(cls, spec: "JobSpec", owner: str | None = None, webhook: Webhook | None = None) -> "JobRecord":
        """The record of a job just accepted: queued, with its step count, its weight in pixels, its owner,
        its webhook and the request ID it came with."""
        return cls(
            id=new_job_id(),
            owner=owner,
            webhook=webhook,
            request_id=request_id.get(),
            kind=spec.kind,
            model=spec.model,
            pixels=spec.pixels,
            progress=Progress(step=0, total=spec.total_steps),
        )

    def timings(self) -> dict[str, float]:
        now = self.finished_at or time.time()
        started = self.started_at or now
        return {
            "queued_ms": round((started - self.created_at) * 1000, 2),
            "run_ms": round((now - started) * 1000, 2),
            "total_ms": round((now - self.created_at) * 1000, 2),
        }


def new_job_id() -> str:
    return uuid.uuid4().hex


class EngineEvent(_Model):
    """What the worker reports about a job; the queue backend turns these into record updates (a
    ``preview`` changes no record: it goes to the job's event stream only)."""

    job_id: str
    type: Literal["started", "progress", "preview", "succeeded", "failed", "canceled"]
    progress: Progress | None = None
    result: JobResult | None = None
    preview: list[ResultImage] | None = None
    error: str | None = None
    at: float = Field(default_factory=time.time)


def apply_event(record: JobRecord, event: EngineEvent) -> bool:
    """Apply a worker's event to a job record; False (and no change) once the record is final, or for a
    preview."""
    if record.status.finished or event.type == "preview":
        return False
    if event.type == "started":
        record.status, record.started_at = JobStatus.running, record.started_at or event.at
    elif event.type == "progress" and event.progress is not None:
        record.progress = event.progress
        if record.status == JobStatus.queued:
            record.status, record.started_at = JobStatus.running, event.at
    else:
        record.status = JobStatus(event.type)
        record.finished_at = event.at
        if record.status == JobStatus.succeeded:  # it ran; a job failed or canceled in the queue never started
            record.started_at = record.started_at or event.at
        record.result, record.error = event.result, event.error
        if record.status == JobStatus.succeeded:
            record.progress = Progress(step=record.progress.total, total=record.progress.total)
    return True


def hand_back(record: JobRecord) -> None:
    """A job a stopping worker gives back unfinished: queued again for the next worker, which runs it from
    its first step (its seed gives the same images). It is no longer running, so it reads so."""
    record.status, record.started_at = JobStatus.queued, None
    record.progress = Progress(step=0, total=record.progress.total)


def webhook_events(before: JobStatus, after: JobRecord) -> list[WebhookEvent]:
    """The webhook events a record's change from status ``before`` fires: ``started`` when a queued job has
    begun to run (even if it finished within the same write), ``completed`` when it is final. A job failed
    or canceled while queued (a model that would not load, no worker serving its model, a cancel) never
    started: it has no ``started_at``. (The Redis backend applies the same rule in its UPDATE_RECORD
    script, and fires ``started`` once per job: a job a stopping worker hands back is queued again.)"""
    fired: list[WebhookEvent] = []
    if before == JobStatus.queued and after.started_at is not None:
        fired.append("started")
    if after.status.finished and not before.finished:
        fired.append("completed")
    return fired


TRANSIENT_EVENTS = ("progress", "preview")  # SSE events before the final one


def preview_payload(event: EngineEvent) -> tuple[str, dict]:
    """The SSE ``preview`` event: the step it was taken at and the images (base64)."""
    data = {
        "job_id": event.job_id,
        "progress": event.progress.model_dump() if event.progress else None,
        "images": [
            {"index": i.index, "seed": i.seed, "media_type": i.media_type, "data": base64.b64encode(i.data).decode()}
            for i in event.preview or []
        ],
    }
    return "preview", data


def event_payload(record: JobRecord) -> tuple[str, dict]:
    """The (SSE event, data) pair describing a record's current state: ``progress`` until it is final,
    then its final status."""
    data = {"job_id": record.id, "status": record.status.value, "progress": record.progress.model_dump()}
    if record.error:
        data["error"] = record.error
    return (record.status.value if record.status.finished else "progress"), data
