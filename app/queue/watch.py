"""Local subscribers to job changes, shared by every backend: SSE streams and sync waits.

A backend calls ``notify`` whenever it learns that a job changed (from its engine, or from Redis
pub/sub); ``follow`` and ``wait`` register before reading the current record, so no change is missed.
Previews are live only, but each running job's latest one is kept (until the job's final event, for at
most ``KEPT_PREVIEWS`` jobs), so a follower who arrives between two previews sees the latest at once
instead of waiting up to k steps for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Awaitable, Callable

from app.jobs import TRANSIENT_EVENTS, JobRecord, event_payload
from app.queue.protocol import QueueUnavailable

Current = Callable[[], Awaitable[JobRecord | None]]
RECHECK_S = 5.0
_UNREAD = object()  # a wait that has not read its job's record yet
KEPT_PREVIEWS = 256  # jobs whose latest preview is kept; past that the oldest is dropped
ENDED_REMEMBERED = 1024  # jobs whose final event was seen, so a preview from their last pass is not kept


def lost(job_id: str) -> tuple[str, dict]:
    """The final event of a stream whose job's record vanished while it ran: it will never finish."""
    error = "the job's record vanished before it finished (Redis restarted without its data, or it was forgotten)"
    return "failed", {"job_id": job_id, "status": "failed", "error": error}


class Watchers:
    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue]] = {}
        self._previews: dict[str, tuple[str, dict]] = {}  # job -> its latest preview, while it runs
        self._ended: dict[str, None] = {}  # jobs whose final event came, oldest first

    def notify(self, job_id: str, payload: tuple[str, dict]) -> None:
        kind = payload[0]
        if kind == "preview":
            if job_id in self._ended:  # from a pass that ran as the job was canceled: nobody will see it
                return
            self._previews.pop(job_id, None)  # re-inserted last: the dict's order is the eviction order
            self._previews[job_id] = payload
            while len(self._previews) > KEPT_PREVIEWS:
                del self._previews[next(iter(self._previews))]
        elif kind not in TRANSIENT_EVENTS:
            self._previews.pop(job_id, None)
            self._ended[job_id] = None
            while len(self._ended) > ENDED_REMEMBERED:
                del self._ended[next(iter(self._ended))]
        for queue in self._queues.get(job_id, ()):
            queue.put_nowait(payload)

    def watching(self, job_id: str) -> bool:
        return job_id in self._queues

    def wants(self, job_id: str, kind: str) -> bool:
        """Whether a change of this kind to this job matters here: someone follows the job, or it is a
        preview (kept for a later follower), or it ends a job whose preview is kept."""
        return job_id in self._queues or kind == "preview" or job_id in self._previews

    def _register(self, job_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues.setdefault(job_id, set()).add(queue)
        return queue

    def _unregister(self, job_id: str, queue: asyncio.Queue) -> None:
        queues = self._queues.get(job_id, set())
        queues.discard(queue)
        if not queues:
            self._queues.pop(job_id, None)

    async def follow(self, job_id: str, current: Current) -> AsyncIterator[tuple[str, dict]]:
        """The job's state now (and its latest preview, if it has one), then each change, ending with its
        final status."""
        kept = self._previews.get(job_id)  # taken before registering: a later preview comes by the queue only
        queue = self._register(job_id)
        try:
            record = await current()
            if record is None:
                yield lost(job_id)
                return
            kind, data = event_payload(record)
            yield kind, data
            if kind in TRANSIENT_EVENTS and kept is not None:
                yield kept
            while kind in TRANSIENT_EVENTS:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), RECHECK_S)
                except asyncio.TimeoutError:
                    # No word for a while (a lost pub/sub message, a dead worker): look at the record itself.
                    try:
                        record = await current()
                    except QueueUnavailable:  # the backend is away: keep the stream open, look again later
                        continue
                    if record is None:  # lost mid-stream (Redis restarted without its data): say so, finally
                        yield lost(job_id)
                        return
                    kind, data = event_payload(record)
                yield kind, data
        finally:
            self._unregister(job_id, queue)

    async def wait(self, job_id: str, current: Current, timeout: float) -> JobRecord | None:
        """The record once final, or as it stands after ``timeout`` seconds. The backend away meanwhile is waited
        out, even at the first look (just after the submit: the job is accepted, a 503 would have its client
        send it again); QueueUnavailable only if the record could not be read once in ``timeout``."""
        queue = self._register(job_id)
        try:
            deadline = time.monotonic() + timeout
            record: JobRecord | None | object = _UNREAD
            with contextlib.suppress(QueueUnavailable):
                record = await current()
            while record is _UNREAD or (record is not None and not record.status.finished):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    kind, _ = await asyncio.wait_for(queue.get(), min(left, RECHECK_S))
                except asyncio.TimeoutError:
                    kind = "recheck"
                if kind not in TRANSIENT_EVENTS:
                    with contextlib.suppress(QueueUnavailable):  # away: keep the last record, look again later
                        record = await current()
            if record is _UNREAD:
                raise QueueUnavailable(f"job {job_id}'s record could not be read for {timeout:g} s")
            return record
        finally:
            self._unregister(job_id, queue)
