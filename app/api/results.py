"""Job records to HTTP answers: the JSON body, raw image bytes, 202 for async, and sync waiting."""

from __future__ import annotations

import base64

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Response
from fastapi.responses import JSONResponse

from app.api.deps import QueueDep, SettingsDep
from app.api.errors import ApiError
from app.api.negotiation import choose_format, prefers_async, wants_raw_image
from app.jobs import JobRecord, JobSpec, JobStatus
from app.queue.protocol import JobQueue, QueueFull
from app.settings import Settings

RESPONSES = {
    200: {"description": "the images: JSON with base64 data, or raw bytes with `Accept: image/png` (one image)",
          "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
    202: {"description": "accepted (`Prefer: respond-async`, or still running after the sync timeout)"},
    404: {"description": "unknown model"},
    406: {"description": "`Accept` cannot be satisfied"},
    413: {"description": "body too large, or too many pixels"},
    415: {"description": "unsupported content type"},
    422: {"description": "invalid field or undecodable image (named in `detail[].loc`)"},
    503: {"description": "queue full (see `Retry-After`) or model not served"},
}


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


def accepted(record: JobRecord) -> JSONResponse:
    return JSONResponse(
        {"job_id": record.id, "status": record.status.value},
        status_code=202,
        headers={"Location": job_url(record.id), "Preference-Applied": "respond-async"},
    )


async def submit(queue: JobQueue, spec: JobSpec, idempotency_key: str | None) -> JobRecord:
    try:
        return await queue.submit(spec, idempotency_key=idempotency_key)
    except QueueFull as exc:
        raise ApiError(503, [], "the job queue is full; retry later", type="queue_full", headers={"Retry-After": str(exc.retry_after)}) from exc


async def run_job(
    queue: JobQueue, spec: JobSpec, *, idempotency_key: str | None, prefer_async: bool, raw: bool, timeout: float
) -> Response:
    """Submit, then answer 202 at once (async) or wait for the result (sync)."""
    record = await submit(queue, spec, idempotency_key)
    if prefer_async:
        return accepted(record)
    record = await queue.wait(record.id, timeout)
    if record is None:
        raise ApiError(404, ["path", "job_id"], "job expired before it could be returned", type="not_found")
    if not record.status.finished:
        return accepted(record)  # still running after the sync timeout: poll it
    if record.status == JobStatus.succeeded and raw:
        image = record.result.images[0]
        headers = {"X-Job-Id": record.id, "Location": job_url(record.id)}
        if image.seed is not None:
            headers["X-Seed"] = str(image.seed)
        return Response(image.data, media_type=image.media_type, headers=headers)
    status = {JobStatus.succeeded: 200, JobStatus.canceled: 409, JobStatus.failed: 500}[record.status]
    return JSONResponse(job_body(record), status_code=status, headers={"Location": job_url(record.id)})


@dataclass
class Submission:
    """What every job-creating route needs: the queue, the settings and the negotiation headers."""

    queue: JobQueue
    settings: Settings
    accept: str | None
    prefer: str | None
    idempotency_key: str | None

    @property
    def raw(self) -> bool:
        return wants_raw_image(self.accept)

    def output_format(self, requested: str | None) -> str:
        return choose_format(requested, self.accept)

    async def run(self, spec: JobSpec) -> Response:
        return await run_job(
            self.queue, spec, idempotency_key=self.idempotency_key, prefer_async=prefers_async(self.prefer),
            raw=self.raw, timeout=self.settings.sync_timeout_s,
        )


def submission(
    queue: QueueDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header(description="`respond-async` for 202 and a job ID")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200, description="the same key returns the same job")] = None,
) -> Submission:
    return Submission(queue, settings, accept, prefer, idempotency_key)


SubmissionDep = Annotated[Submission, Depends(submission)]
