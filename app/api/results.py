"""Job records to HTTP answers: the JSON body, raw image bytes, 202 for async, and sync waiting."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.deps import QueueDep, SettingsDep
from app.api.errors import ApiError, single_header
from app.api.negotiation import Negotiated, negotiate_result, prefers_async
from app.api.schemas import ErrorBody, JobAccepted, JobOut, job_body, job_url
from app.api.webhooks import webhook_for
from app.imaging import MEDIA_TYPES
from app.jobs import JobRecord, JobSpec, JobStatus, Webhook
from app.api.auth import OPEN, Caller, CallerDep
from app.metrics import QUOTA_REFUSALS
from app.queue.protocol import Admission, IdempotencyConflict, JobQueue, QueueFull, QueueUnavailable, TooManyJobs
from app.serving import Drain
from app.settings import Settings
from app.store.catalog import ModelEntry


log = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.25


def errors_for(*codes: int) -> dict[int | str, dict]:
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def json_errors_for(*codes: int) -> dict[int | str, dict]:
    """The same, for a route whose own answers are not JSON (an event stream): errors still are."""
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {code: {"description": ERROR_DESCRIPTIONS[code], "content": ref} for code in codes}


ERROR_DESCRIPTIONS = {
    400: "malformed body (e.g. broken multipart)",
    401: "no or unknown API key (`WWW-Authenticate: Bearer`)",
    403: "the API key lacks the scope",
    429: "the key is over its requests per minute or its concurrent jobs (`Retry-After`)",
    404: "unknown model or job",
    405: "method not allowed; `Allow` lists the methods",
    406: "`Accept` cannot be satisfied",
    409: "the job is already finished, or not finished yet",
    413: "body too large, or too many pixels",
    415: "unsupported content type",
    422: "invalid field, undecodable image, request the model cannot serve, or too costly (named in `detail[].loc`)",
    503: "queue full, job store unreachable, a job lost by it, or model not served (`Retry-After`: retry)",
}
JOB_ERRORS = errors_for(401, 403, 404, 405, 406, 422, 429)
IMAGE_MEDIA = {media_type: {} for media_type in MEDIA_TYPES.values()}

# Every job-creating route answers with these.
RESPONSES: dict[int | str, dict] = {
    200: {
        "description": "the images: JSON with base64 data, or raw bytes with `Accept: image/png` (one image)",
        "content": IMAGE_MEDIA,
    },
    202: {
        "model": JobAccepted,
        "description": "accepted (`Prefer: respond-async`, or still running after the sync timeout)",
    },
    409: {"model": JobOut, "description": "the job was canceled while the request waited"},
    500: {"model": JobOut, "description": "the job failed in the engine (not an input error)"},
    **errors_for(400, 401, 403, 404, 405, 406, 413, 415, 422, 429, 503),
}


def accepted(record: JobRecord, *, preferred: bool) -> JSONResponse:
    """202 with the job's Location; ``Preference-Applied`` only where the client asked for it (``Prefer:
    respond-async``, RFC 7240), not for a sync request answered so at its timeout or at a shutdown."""
    headers = {"Location": job_url(record.id)}
    if preferred:
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse({"job_id": record.id, "status": record.status.value}, status_code=202, headers=headers)


async def submit(
    queue: JobQueue,
    spec: JobSpec,
    idempotency_key: str | None,
    fingerprint: str,
    caller: Caller = OPEN,
    webhook: Webhook | None = None,
) -> JobRecord:
    try:
        terms = Admission(idempotency_key, fingerprint, caller.name, caller.max_concurrent_jobs, webhook)
        record = await queue.submit(spec, terms)
    except TooManyJobs as exc:
        QUOTA_REFUSALS.labels(caller.name or "", "max_concurrent_jobs").inc()
        raise ApiError(
            429,
            ["header", caller.header],
            f"key {caller.name!r} already has its {caller.max_concurrent_jobs} jobs queued or running",
            type="too_many_jobs",
            headers={"Retry-After": str(exc.retry_after)},
        ) from exc
    except QueueFull as exc:
        raise ApiError(
            503,
            [],
            "the job queue is full (jobs or image pixels held); retry later",
            type="queue_full",
            headers={"Retry-After": str(exc.retry_after)},
        ) from exc
    except IdempotencyConflict as exc:
        # The IETF idempotency-key draft (sec. 2.7): a key reused with another payload is a 422.
        raise ApiError(
            422,
            ["header", "idempotency-key"],
            "this Idempotency-Key was used for a different request; use a new key for a new request",
            type="idempotency_key_reused",
        ) from exc
    return record


async def _client_gone(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


async def wait_for_result(
    queue: JobQueue, record: JobRecord, timeout: float, request: Request | None, drain: Drain | None
) -> tuple[JobRecord | None, str]:
    """Wait for the job: (its record, why the wait ended): ``done`` (final, or the sync timeout passed),
    ``gone`` (the client disconnected) or ``draining`` (the server is stopping and its grace is nearly over)."""
    waits = {asyncio.create_task(queue.wait(record.id, timeout)): "done"}
    if request is not None:
        waits[asyncio.create_task(_client_gone(request))] = "gone"
    if drain is not None:
        waits[asyncio.create_task(drain.deadline_passed())] = "draining"
    try:
        finished, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    reasons = {waits[task] for task in finished}
    reason = "done" if "done" in reasons else reasons.pop()
    if reason == "done":
        try:
            return next(t for t in finished if waits[t] == "done").result(), reason
        except QueueUnavailable:  # not once read back since the submit: the job is accepted, say where it is
            return record, reason
    try:
        return await queue.get(record.id), reason
    except QueueUnavailable:  # the backend is away: answer from the record as submitted
        return record, reason


async def run_job(
    queue: JobQueue,
    spec: JobSpec,
    *,
    idempotency_key: str | None,
    fingerprint: str,
    prefer_async: bool,
    raw: bool,
    timeout: float,
    caller: Caller = OPEN,
    webhook: Webhook | None = None,
    request: Request | None = None,
    drain: Drain | None = None,
) -> Response:
    """Submit, then answer 202 at once (async) or wait for the result (sync). A sync client that
    disconnects cancels its job, unless it sent an Idempotency-Key (it means to come back for it). When the
    server stops before the job is done: 202 and its Location if the job outlives this process (Redis),
    else a 503."""
    record = await submit(queue, spec, idempotency_key, fingerprint, caller, webhook)
    if prefer_async:
        return accepted(record, preferred=True)
    job_id = record.id
    record, reason = await wait_for_result(queue, record, timeout, request, drain)
    if reason == "gone" and record is not None and not record.status.finished:
        if idempotency_key is None:
            await queue.cancel(job_id)
            log.info("client of job %s disconnected: job canceled", job_id)
        return Response(status_code=499)  # nobody is listening
    if reason == "draining" and record is not None and not record.status.finished:
        if queue.durable:
            return accepted(record, preferred=False)
        raise ApiError(
            503,
            [],
            f"the server is shutting down and job {job_id} did not finish in time; send the request again",
            type="shutting_down",
            headers={"Retry-After": "5"},
        )
    if record is None:  # accepted, then its record vanished: Redis restarted without its data, or evicted
        raise ApiError(
            503,
            [],
            f"job {job_id} was lost by the job store before it finished (was Redis restarted without its "
            "data?); send the request again",
            type="job_lost",
            headers={"Retry-After": "2"},
        )
    if not record.status.finished:
        return accepted(record, preferred=False)  # still running after the sync timeout: poll it
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
    caller: Caller = OPEN

    @property
    def models(self) -> dict[str, ModelEntry]:
        return self.queue.models

    def negotiated(
        self, requested_format: str | None, *, images: int = 1, formats: list[str] | None = None
    ) -> Negotiated:
        """JSON or raw image bytes, and the output format (406 when Accept allows neither)."""
        return negotiate_result(self.accept, requested_format, images=images, formats=formats)

    request: Request | None = None
    drain: Drain | None = None

    async def run(self, spec: JobSpec, *, fingerprint: str, options: BaseModel) -> Response:
        """Submit ``spec`` (from the request ``options``, which may name a webhook) and answer."""
        webhook = await webhook_for(options, self.settings)
        # the format Accept chose is part of the request: replayed with a key, another format is another request
        fingerprint = hashlib.sha256(f"{fingerprint}:{spec.output_format}".encode()).hexdigest()
        return await run_job(
            self.queue,
            spec,
            idempotency_key=self.idempotency_key,
            fingerprint=fingerprint,
            prefer_async=prefers_async(self.prefer),
            raw=self.negotiated(spec.output_format, images=spec.image_count).raw,
            timeout=self.settings.sync_timeout_s,
            caller=self.caller,
            webhook=webhook,
            request=self.request,
            drain=self.drain,
        )


async def submission(
    request: Request,
    queue: QueueDep,
    settings: SettingsDep,
    caller: CallerDep,
    accept: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header(description="`respond-async` for 202 and a job ID")] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1, max_length=200, description="the same key returns the same job; reused with another body: 422"
        ),
    ] = None,
) -> Submission:
    single_header(request, "Idempotency-Key")  # given twice, which job it names is not guessed
    await announced_models(queue)
    return Submission(queue, settings, accept, prefer, idempotency_key, caller, request, request.app.state.drain)


async def announced_models(queue: JobQueue, *, now: bool = False) -> dict[str, ModelEntry]:
    """The catalog, read again now when the last refresh found none (a node that started before its workers
    announced, or Redis that lost its data): the first request after a worker's announcement is not refused
    for want of a refresh. ``now``: read again in any case (the model routes, which show the statuses: while
    Redis is away they answer 503 as every other route does, not the last catalog as if all were well)."""
    if now or not queue.models:
        await queue.refresh_catalog()
    return queue.models


SubmissionDep = Annotated[Submission, Depends(submission)]
