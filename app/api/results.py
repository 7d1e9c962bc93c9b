"""Job records to HTTP answers: the JSON body, raw image bytes, 202 for async, and sync waiting."""

from __future__ import annotations

import base64

from fastapi import Response
from fastapi.responses import JSONResponse

from app.api.errors import ApiError
from app.queue.jobs import JobRecord, JobSpec, JobStatus
from app.queue.protocol import JobQueue, QueueFull


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
