"""Local subscribers to job changes, shared by every backend: SSE streams and sync waits.

A backend calls ``notify`` whenever it learns that a job changed (from its engine, or from Redis
pub/sub); ``follow`` and ``wait`` register before reading the current record, so no change is missed.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

from app.jobs import TRANSIENT_EVENTS, JobRecord, event_payload

Current = Callable[[], Awaitable[JobRecord | None]]
RECHECK_S = 5.0


class Watchers:
    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue]] = {}

    def notify(self, job_id: str, payload: tuple[str, dict]) -> None:
        for queue in self._queues.get(job_id, ()):
            queue.put_nowait(payload)

    def watching(self, job_id: str) -> bool:
        return job_id in self._queues

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
        """The job's state now, then each change, ending with its final status."""
        queue = self._register(job_id)
        try:
            record = await current()
            if record is None:
                return
            kind, data = event_payload(record)
            yield kind, data
            while kind in TRANSIENT_EVENTS:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), RECHECK_S)
                except asyncio.TimeoutError:
                    # No word for a while (a lost pub/sub message, a dead worker): look at the record itself.
                    record = await current()
                    if record is None:
                        return
                    kind, data = event_payload(record)
                yield kind, data
        finally:
            self._unregister(job_id, queue)

    async def wait(self, job_id: str, current: Current, timeout: float) -> JobRecord | None:
        """The record once final, or as it stands after ``timeout`` seconds."""
        queue = self._register(job_id)
        try:
            record = await current()
            deadline = time.monotonic() + timeout
            while record is not None and not record.status.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    kind, _ = await asyncio.wait_for(queue.get(), min(left, RECHECK_S))
                except asyncio.TimeoutError:
                    kind = "recheck"
                if kind not in TRANSIENT_EVENTS:
                    record = await current()
            return record
        finally:
            self._unregister(job_id, queue)
