"""The service's one settings class: environment variables with the ``DIFFUSION_`` prefix."""

from __future__ import annotations

import base64
import binascii
import difflib
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Measured by bench/bench_service.py (docs/benchmarks.md): on 2 CPU cores, batches past 64 rows got
# slower; a GPU keeps gaining far beyond that.
DEFAULT_MAX_BATCH = {"cpu": 64, "cuda": 256}
# Pixels per forward pass (rows x image area). On 2 CPU cores the photo denoiser runs 256x256 tiles fastest
# in passes of 1-2 tiles (11.3 / 11.8 / 10.6 / 7.2 / 4.3 tiles/s at 1 / 2 / 4 / 8 / 64 tiles; bench/
# bench_pass_pixels.py, docs/fairness.md), while 64 digits (28x28) fit in the same budget; short passes also
# let other jobs in sooner. A GPU keeps gaining with batch size: 64 tiles there (not yet measured).
DEFAULT_MAX_BATCH_PIXELS = {"cpu": 2 * 256 * 256, "cuda": 64 * 256 * 256}
# Tile edge for denoising large images, by the network's precision. The photo denoiser, trained on 96-pixel
# crops, is 0.01-0.02 dB better on tiles of at most 192 than of 256 (docs/denoising.md, "Smaller tiles") for
# about 11% more time. In float32, where its time is tightest, a 0.25 Mpx photo goes in one tile of up to 640:
# 12-15% less time than tiles of 256 for 0.015 dB less at sigma 15 on held-out set 1 ("One tile in float32").
DEFAULT_DENOISE_TILE = {"reduced": 192, "float32": 640}
WEBHOOK_BACKOFF_GROWTH = 3  # each retry waits 3x longer than the one before: 10 s, 30 s, 90 s, 270 s, 810 s by default


class Settings(BaseSettings):
    # allow_inf_nan: "inf" is no duration (it overflowed Redis TTLs and uvicorn's timeout), "nan" no size
    model_config = SettingsConfigDict(
        env_prefix="DIFFUSION_", env_file=None, protected_namespaces=(), allow_inf_nan=False
    )

    model_store: Path = Field(Path("./model_store"), description="folder holding one sub-folder per model")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="network precision; auto: bfloat16 autocast on CUDA (float16 on GPUs without bf16) and on a CPU "
        "with native bf16 (AVX512-BF16, AMX) where it pays (AMX, or AVX512-BF16 on AMD), float32 on other CPUs",
    )
    max_batch: int | None = Field(None, ge=1, le=4096, description="rows per forward pass; default per device")
    max_batch_pixels: int | None = Field(
        None, ge=1024, description="pixels per forward pass (rows x image area); default per device"
    )
    queue_limit: int = Field(256, ge=1, description="jobs queued or running before new ones get 503")
    queue_max_pixels: int = Field(
        64 * 1024 * 1024, ge=64, description="image pixels held by queued or running jobs before new ones get 503"
    )
    max_job_megapixel_steps: float = Field(
        1000.0,
        gt=0,
        description="largest job: network evaluations x pixels per evaluation, in megapixels; "
        "above it a request gets 422",
    )
    max_attention_positions: int = Field(
        128 * 128,
        ge=1,
        description="most positions one attention layer may attend over (its cost grows with their square: "
        "Stable Diffusion 1.x at 1024x1024 has 16,384 in its first level and its VAE); above it a request gets 422",
    )
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest request body")
    max_pixels: int = Field(4096 * 4096, ge=64, description="largest image (width x height) accepted")
    decode_concurrency: int = Field(
        2,
        ge=1,
        le=256,
        description="uploads an API process decodes at once (each takes up to about 6 bytes a pixel: 100 MB at "
        "the default max_pixels, from a 50 KB PNG); the others wait their turn",
    )
    job_retention_s: float = Field(600.0, gt=0, description="how long finished jobs stay fetchable")
    sync_timeout_s: float = Field(300.0, gt=0, description="a sync request still running after this gets 202")
    default_generator: str | None = Field(None, description="model used by /v1/generate without 'model'")
    default_denoiser: str | None = Field(None, description="model used by /v1/denoise without 'model'")
    model_memory_gb: float | None = Field(
        None, gt=0, description="weights the engine may hold; default: the device's memory less a margin"
    )
    preload: str | None = Field(
        None, description="comma-separated models loaded at start (readiness waits); default: all that fit"
    )
    keep_freed_memory: bool = Field(
        True,
        description="glibc: the engine's process keeps freed memory for the next forward pass instead of returning "
        "it to the OS (faster on CPUs; resident memory stays at its peak); false: glibc's defaults",
    )
    cpu_row_groups: bool = Field(
        True,
        description="on the CPU, split each forward pass by rows into one group per thread, each computed by one "
        "thread (no barrier between the cores after every operator); false: every operator across all threads",
    )
    denoise_tile: int | None = Field(
        None,
        ge=32,
        le=2048,
        description="tile edge for denoising large images; default: 192 where the network computes in bf16 or "
        "float16, 640 in float32",
    )
    denoise_overlap: int = Field(16, ge=0, le=512, description="overlap between neighbouring tiles")
    api_keys_file: Path | None = Field(None, description="JSON list of API keys (hashes, scopes, quotas); none: open")
    metrics_require_key: bool = Field(False, description="/metrics needs an API key (it is open by default)")
    worker_metrics_port: int | None = Field(None, ge=1, le=65535, description="a Redis worker serves /metrics here")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")
    cors_origins: str | None = Field(None, description="comma-separated origins browsers may call from; none: no CORS")
    webhook_secret: SecretStr | None = Field(
        None, description="signs webhook deliveries (Standard Webhooks, whsec_<base64>); none: webhooks refused"
    )
    webhook_allow_hosts: str | None = Field(
        None, description="comma-separated webhook hosts allowed even on private or loopback addresses"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="one webhook attempt's time limit")
    webhook_attempts: int = Field(6, ge=1, le=20, description="webhook attempts before a delivery is given up")
    webhook_backoff_s: float = Field(
        10.0, gt=0, description="first webhook retry after this; each later one waits 3 times longer"
    )
    webhook_max_pending_mb: float = Field(
        64.0,
        gt=0,
        description="in-process: megabytes of images undelivered webhook messages hold at most; a message past "
        "it carries its images' URLs without their data",
    )
    max_finished_jobs: int = Field(
        1000, ge=1, description="in-process: finished jobs kept at most (the oldest are forgotten first)"
    )
    max_finished_mb: float = Field(
        256.0, gt=0, description="in-process: megabytes of finished jobs' images kept at most (oldest forgotten)"
    )
    finished_grace_s: float = Field(
        60.0,
        ge=0,
        description="in-process: a finished job is kept at least this long past the caps on finished jobs (not "
        "past its retention, nor beyond twice a cap and one result), so a client polling after its 202 finds it",
    )
    header_timeout_s: float = Field(10.0, gt=0, description="a client must send a request's headers within this")
    body_timeout_s: float = Field(30.0, gt=0, description="longest wait for the next piece of a request body")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # -- scale-out on Redis (see README "Scaling out"); without queue_url, the in-process queue --------
    queue_url: str | None = Field(None, description="redis://host:port/db: use Redis Streams and separate workers")
    queue_wait_s: float = Field(
        30.0, ge=0, description="at start, how long a node or worker waits for Redis to answer before it gives up"
    )
    redis_prefix: str = Field("diffusion", pattern=r"^[A-Za-z0-9:_-]{1,64}$", description="key prefix in Redis")
    embedded_worker: bool | None = Field(
        None, description="run a worker inside the API process; default: only without Redis"
    )
    lease_s: float = Field(15.0, gt=0.1, description="a worker silent this long loses its jobs to live workers")
    worker_forget_s: float = Field(
        600.0,
        gt=0,
        description="a worker silent this long is forgotten, and the models only it served leave the catalog",
    )
    max_attempts: int = Field(3, ge=1, description="workers a job may crash before it is failed")
    worker_jobs: int | None = Field(None, ge=1, description="jobs a worker holds at once; default 2 x max batch")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long a worker finishes its jobs before handing them back"
    )
    engine_stuck_s: float = Field(
        600.0,
        gt=0,
        description="an engine busy this long in one turn (a forward pass, a model load on first use) is stuck: "
        "a Redis worker stops (its jobs are taken over after their lease), and /healthz answers 503, so the process is "
        "restarted",
    )

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> "Settings":
        if 2 * self.denoise_overlap >= (tile := self.denoise_tile_for(None)):
            raise ValueError(f"denoise_overlap must be less than half of denoise_tile ({tile}, set or by default)")
        if self.worker_forget_s <= self.lease_s:
            raise ValueError("worker_forget_s must be longer than lease_s: a worker is forgotten only after its jobs")
        if self.embedded_worker is False and self.queue_url is None:
            raise ValueError("embedded_worker=false needs a queue_url: without Redis the API process runs the engine")
        if self.queue_url is not None and not self.queue_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("queue_url must be a redis://, rediss:// or unix:// URL")
        if self.queue_url is not None and self.queue_url.startswith(("redis://", "rediss://")):
            database = urlsplit(self.queue_url).path.strip("/")
            if database and not database.isdigit():  # redis-py would take database 0 without a word
                raise ValueError(f"queue_url's database must be a number, as in redis://host:6379/0, not {database!r}")
        if self.webhook_secret is not None:
            secret = self.webhook_secret.get_secret_value().removeprefix("whsec_")
            try:
                if len(base64.b64decode(secret, validate=True)) < 16:
                    raise ValueError
            except (binascii.Error, ValueError):
                raise ValueError("webhook_secret must be whsec_ and the base64 of at least 16 random bytes") from None
        return self

    @property
    def webhook_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in (self.webhook_allow_hosts or "").split(",") if h.strip())

    @property
    def runs_embedded_worker(self) -> bool:
        return self.queue_url is None if self.embedded_worker is None else self.embedded_worker

    def batch_cap(self, device_type: str) -> int:
        return self.max_batch or DEFAULT_MAX_BATCH.get(device_type, DEFAULT_MAX_BATCH["cpu"])

    def batch_pixel_cap(self, device_type: str) -> int:
        return self.max_batch_pixels or DEFAULT_MAX_BATCH_PIXELS.get(device_type, DEFAULT_MAX_BATCH_PIXELS["cpu"])

    def denoise_tile_for(self, reduced_precision: bool | None) -> int:
        """The tile edge a worker denoises with: the setting, else by whether its network computes in bf16 or
        float16; None (not known, as in the API process, which plans a job only to price it): the smaller
        default, which plans the most pixels."""
        if self.denoise_tile is not None:
            return self.denoise_tile
        if reduced_precision is None:
            return min(DEFAULT_DENOISE_TILE.values())
        return DEFAULT_DENOISE_TILE["reduced" if reduced_precision else "float32"]

    def webhook_backoff_after(self, attempt: int) -> float:
        """The wait after failed webhook attempt number ``attempt`` (1 for the first), before a +-10% jitter."""
        return self.webhook_backoff_s * WEBHOOK_BACKOFF_GROWTH ** (attempt - 1)

    @property
    def webhook_delivery_ttl_s(self) -> int:
        """How long Redis keeps a webhook delivery: past its last attempt (every wait at its +10% jitter, every
        attempt at its time limit and claim), and at least two days."""
        waits = 1.1 * sum(self.webhook_backoff_after(a) for a in range(1, self.webhook_attempts))
        attempts = self.webhook_attempts * (self.webhook_timeout_s + 30)
        return math.ceil(max(2 * 24 * 3600, waits + attempts + 3600))

    @property
    def preload_names(self) -> list[str]:
        """The models DIFFUSION_PRELOAD names, in order (empty: every served model that fits)."""
        return [name.strip() for name in (self.preload or "").split(",") if name.strip()]

    def unknown_models(self, store_names: set[str], *, defaults: bool) -> str | None:
        """Why the settings name a model the store lacks (a typo), or None: DIFFUSION_PRELOAD, and with
        ``defaults`` the default generator and denoiser too (a node whose store is the whole catalog)."""
        named = [("DIFFUSION_PRELOAD", name) for name in self.preload_names]
        if defaults:
            named += [
                (setting, name)
                for setting, name in (
                    ("DIFFUSION_DEFAULT_GENERATOR", self.default_generator),
                    ("DIFFUSION_DEFAULT_DENOISER", self.default_denoiser),
                )
                if name
            ]
        wrong = [f"{setting} names {name!r}" for setting, name in named if name not in store_names]
        if not wrong:
            return None
        held = ", ".join(sorted(store_names)) or "none"
        store = self.model_store.resolve()
        return f"{'; '.join(wrong)}, which the model store {store} does not hold (it holds: {held})"

    @property
    def heartbeat_s(self) -> float:
        """Redis workers beat, and renew their leases, three times per lease."""
        return self.lease_s / 3


@lru_cache
def get_settings() -> Settings:
    return Settings()


# Read by the test suite, not by the service
NOT_SETTINGS = frozenset({"DIFFUSION_BROWSER_TESTS"})


# What Kubernetes sets in a pod for each Service of its namespace (service links): a Service named
# diffusion-api gives DIFFUSION_API_SERVICE_HOST, DIFFUSION_API_PORT, DIFFUSION_API_PORT_8000_TCP_ADDR, ...
_SERVICE_LINK = re.compile(r"(.+?)_(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?|PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_\w+)?)?)")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``DIFFUSION_*`` environment variables no setting reads, each with the closest setting's name where
    one is close: pydantic-settings ignores them, so a misspelled one (``DIFFUSION_SHUTDOWN_GRACE``) would leave
    its setting at the default without a word. The processes log them at start. Those Kubernetes sets for a
    Service whose name begins with diffusion- (it sets ``<SERVICE>_SERVICE_HOST`` with them) are not settings
    anyone wrote, and are not reported."""
    known = {f"DIFFUSION_{name.upper()}" for name in Settings.model_fields}
    hosts = {key.upper() for key in environ if key.upper().endswith("_SERVICE_HOST")}
    said = []
    for key in sorted(environ):
        name = key.upper()
        if (link := _SERVICE_LINK.fullmatch(name)) and f"{link.group(1)}_SERVICE_HOST" in hosts:
            continue
        if name.startswith("DIFFUSION_") and name not in known and name not in NOT_SETTINGS:
            close = difflib.get_close_matches(name, known, n=1)
            said.append(key + (f" (did you mean {close[0]}?)" if close else ""))
    return said
