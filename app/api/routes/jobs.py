"""Jobs: poll, stream (Server-Sent Events), fetch an image, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.api.auth import Caller, CallerDep
from app.api.deps import QueueDep
from app.api.errors import ApiError, NoContent
from app.api.negotiation import JSON_MEDIA_TYPE, accepting, require_acceptable
from app.api.results import IMAGE_MEDIA, JOB_ERRORS, errors_for, json_errors_for
from app.api.schemas import JobOut, job_body
from app.jobs import TRANSIENT_EVENTS, JobRecord, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=JOB_ERRORS)
AcceptHeader = Annotated[str | None, Header(alias="accept", include_in_schema=False)]
JobId = Path(pattern=r"^[0-9a-f]{32}$", description="the job ID returned on submission")


async def _record(queue, job_id: str, caller: Caller) -> JobRecord:
    """The job, if it exists and the caller may see it: another key's job is "no job", as an unknown one."""
    record = await queue.get(job_id)
    if record is None or not caller.owns(record.owner):
        raise _no_job(job_id)
    return record


def _no_job(job_id: str) -> ApiError:
    why = f"no job {job_id!r} (unknown, or finished and forgotten)"
    return ApiError(404, ["path", "job_id"], why, type="not_found")


@router.get("/{job_id}", response_model=JobOut, dependencies=[Depends(accepting(JSON_MEDIA_TYPE))])
async def get_job(queue: QueueDep, caller: CallerDep, job_id: str = JobId) -> dict:
    """Status (`queued|running|succeeded|failed|canceled`), progress `{step, total}`, result or error."""
    return job_body(await _record(queue, job_id, caller))


async def existing_job(queue: QueueDep, caller: CallerDep, job_id: str = JobId) -> JobRecord:
    """Resolved before a streaming response starts, so an unknown job is a plain 404."""
    return await _record(queue, job_id, caller)


async def unfollowed_job(
    record: Annotated[JobRecord, Depends(existing_job)],
    last_event_id: Annotated[str | None, Header(alias="last-event-id", include_in_schema=False)] = None,
) -> JobRecord:
    """The job, unless the client's last event was its final one (204: an EventSource stops there)."""
    if record.status.finished and last_event_id == record.status.value:
        raise NoContent
    return record


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        204: {"description": "the client's `Last-Event-ID` names the job's final event: it has the job's end"},
        **json_errors_for(404, 405, 406, 422),
    },
    dependencies=[Depends(accepting("text/event-stream"))],
)
async def job_events(
    queue: QueueDep, record: Annotated[JobRecord, Depends(unfollowed_job)]
) -> AsyncIterable[ServerSentEvent]:
    """Server-Sent Events: `progress` while the job runs, then one of `succeeded`, `failed`, `canceled`,
    whose `id` is its name. A stream asked for again with that `Last-Event-ID` (as an `EventSource`
    reconnecting after the end does) is answered `204`: it had the job's end already."""
    async for kind, data in queue.events(record.id):
        yield ServerSentEvent(event=kind, data=data, id=None if kind in TRANSIENT_EVENTS else kind)


@router.get(
    "/{job_id}/images/{index}",
    response_class=Response,
    responses={200: {"content": IMAGE_MEDIA, "description": "the image file"}, **errors_for(409)},
)
async def get_image(
    queue: QueueDep,
    caller: CallerDep,
    accept: AcceptHeader = None,
    job_id: str = JobId,
    index: int = Path(ge=0, le=63),
) -> Response:
    """One result image as raw bytes."""
    record = await _record(queue, job_id, caller)
    if record.status != JobStatus.succeeded or record.result is None:
        raise ApiError(409, ["path", "job_id"], f"job is {record.status.value}: it has no images", type="not_ready")
    if index >= len(record.result.images):
        raise ApiError(404, ["path", "index"], f"job has {len(record.result.images)} image(s)", type="not_found")
    image = record.result.images[index]
    require_acceptable(accept, image.media_type)
    headers = {"X-Seed": str(image.seed)} if image.seed is not None else {}
    return Response(image.data, media_type=image.media_type, headers=headers)


@router.delete(
    "/{job_id}", response_model=JobOut, responses=errors_for(409), dependencies=[Depends(accepting(JSON_MEDIA_TYPE))]
)
async def cancel_job(queue: QueueDep, caller: CallerDep, job_id: str = JobId) -> dict:
    """Cancel a queued or running job: its rows leave the batch at the next step."""
    record = await _record(queue, job_id, caller)
    if record.status.finished:
        raise ApiError(409, ["path", "job_id"], f"job already {record.status.value}", type="finished")
    record = await queue.cancel(job_id)
    if record is None:  # gone a moment before the cancel (Redis lost it): what a GET would answer now
        raise _no_job(job_id)
    if record.status != JobStatus.canceled:  # it finished a moment before the cancel
        raise ApiError(409, ["path", "job_id"], f"job already {record.status.value}", type="finished")
    return job_body(record, include_data=False)
