"""The single-machine backend: job records in this process, the engine in a thread beside it.

Engine events arrive from the engine thread and are handed to the event loop with
``call_soon_threadsafe``; from then on only the loop touches the records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from app import background
from app.jobs import EngineEvent, JobRecord, JobSpec, apply_event, event_payload, preview_payload
from app.metrics import JOBS_KEPT, job_finished, job_submitted
from app.queue.outbox import MemoryOutbox, deliveries_for
from app.queue.protocol import Admission, EngineStopped, IdempotencyConflict, QueueFull, TooManyJobs, stuck_for
from app.queue.watch import Watchers
from app.settings import Settings
from app.store.catalog import ModelEntry, scan_store


log = logging.getLogger(__name__)

PURGE_EVERY_S = 5.0
PURGE_MIN_S = 0.5  # however short the retention: the timer does not spin


def _result_bytes(record: JobRecord) -> int:
    return sum(len(image.data) for image in record.result.images) if record.result else 0


class MemoryJobQueue:
    def __init__(self, settings: Settings, models: dict[str, ModelEntry], engine) -> None:
        self.settings = settings
        self.models = models
        self.engine = engine
        self._records: dict[str, JobRecord] = {}
        self._watchers = Watchers()
        self._idempotency: dict[str, tuple[str, str]] = {}  # key -> (job ID, request fingerprint)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.outbox = MemoryOutbox(settings.webhook_max_pending_mb * 1e6)  # as durable as this process
        self.durable = False
        self._janitor_task: asyncio.Task | None = None
        self._closing = False
        self._failed_held = False  # the jobs held when the engine died were failed
        self._stuck = False  # the engine was found stuck (logged once until it moves again)

    @classmethod
    def start(cls, settings: Settings, models: dict[str, ModelEntry]) -> "MemoryJobQueue":
        from app.engine.engine import Engine  # torch lives behind this import, outside the HTTP layer

        queue = cls(settings, models, engine=None)
        queue.engine = Engine(settings, models, queue._from_engine)
        queue.engine.start()
        return queue

    # -- engine side -------------------------------------------------------------------------------
    def _from_engine(self, events: list[EngineEvent]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._apply_all, events)

    def _apply_all(self, events: list[EngineEvent]) -> None:
        for event in events:
            self._apply(event)

    def _apply(self, event: EngineEvent) -> None:
        if event.type == "preview":  # for the job's event stream only
            self._watchers.notify(event.job_id, preview_payload(event))
            return
        record = self._records.get(event.job_id)
        before = record.status if record is not None else None
        if record is not None and apply_event(record, event):
            # base64 takes 4 bytes for 3: a record's images past the outbox's room are sent by URL
            room = self.outbox.has_room(4 * _result_bytes(record) // 3)
            for delivery in deliveries_for(record, before, images=room):
                self.outbox.add(delivery)
            if record.status.finished:
                job_finished(record)
                self._purge()  # the caps hold after every finished job
            self._watchers.notify(record.id, event_payload(record))

    # -- keeping finished jobs ---------------------------------------------------------------------
    def _purge(self) -> None:
        """Forget finished jobs past their retention, then the oldest finished ones beyond the caps on their
        number and on their images' bytes, once they have been kept ``finished_grace_s`` (or at once beyond
        twice a cap, not counting the newest: the grace bends the caps, it does not lift them); never one that
        a client is waiting on or streaming (it is about to be read). Without the grace a burst of large
        results, or a cap below one result, forgot an async job before its client's first poll."""
        now = time.time()
        horizon = now - self.settings.job_retention_s
        kept_since = now - min(self.settings.finished_grace_s, self.settings.job_retention_s)
        finished = sorted((r.finished_at, j) for j, r in self._records.items() if r.finished_at is not None)
        sizes = {j: _result_bytes(self._records[j]) for _, j in finished}
        held, cap_bytes = sum(sizes.values()), self.settings.max_finished_mb * 1e6
        count = len(finished)
        for finished_at, job_id in finished:
            if finished_at >= horizon and count <= self.settings.max_finished_jobs and held <= cap_bytes:
                break
            if self._watchers.watching(job_id):
                continue
            # in its grace, as every job after it, the caps wait for it, unless the jobs after it alone reach
            # twice a cap: kept past the caps are at most twice them and one result more
            newer_count, newer_bytes = count - 1, held - sizes[job_id]
            bent = newer_count < 2 * self.settings.max_finished_jobs and newer_bytes < 2 * cap_bytes
            if finished_at > kept_since and bent:
                break
            del self._records[job_id]
            count, held = count - 1, held - sizes[job_id]
        live = set(self._records)
        self._idempotency = {k: v for k, v in self._idempotency.items() if v[0] in live}
        JOBS_KEPT.set(count)

    async def _purge_later(self) -> None:
        """Purge on a timer too, so results go when their time is up even if no request comes; and see
        whether the engine still runs."""
        await asyncio.sleep(max(PURGE_MIN_S, min(PURGE_EVERY_S, self.settings.job_retention_s)))
        self.alive()
        self._purge()

    def _fail_held(self) -> None:
        """The engine died: fail every job not finished, with why, so no client waits on it for ever."""
        self._failed_held = True
        error = "the server's engine stopped before this job finished (its error is in the server's log)"
        for record in list(self._records.values()):
            if not record.status.finished:
                self._apply(EngineEvent(job_id=record.id, type="failed", error=error))

    # -- protocol ----------------------------------------------------------------------------------

    def _admits(self, record: JobRecord) -> bool:
        active = [r for r in self._records.values() if not r.status.finished]
        held = sum(r.pixels for r in active)
        if len(active) >= self.settings.queue_limit:
            return False
        return held == 0 or held + record.pixels <= self.settings.queue_max_pixels

    async def submit(
        self,
        spec: JobSpec,
        admission: Admission = Admission(),
    ) -> JobRecord:
        self._loop = asyncio.get_running_loop()  # the loop that serves requests; engine events go to it
        if self._janitor_task is None:
            self._janitor_task = background.forever(self._purge_later)
        self._purge()
        if not self.alive():
            raise EngineStopped()
        key = admission.scoped_key
        if key and key in self._idempotency:
            job_id, claimed_for = self._idempotency[key]
            if claimed_for != admission.fingerprint:
                raise IdempotencyConflict()
            return self._records[job_id]
        record = JobRecord.new(spec, admission.owner, admission.webhook)
        if admission.max_jobs is not None:
            owner = admission.owner
            mine = sum(1 for r in self._records.values() if r.owner == owner and not r.status.finished)
            if mine >= admission.max_jobs:
                raise TooManyJobs(retry_after=1)
        if not self._admits(record):
            raise QueueFull(retry_after=1)
        self._records[record.id] = record
        if key:
            self._idempotency[key] = (record.id, admission.fingerprint)
        self.engine.submit(record.id, spec)
        job_submitted(record)
        return record

    async def get(self, job_id: str) -> JobRecord | None:
        self.alive()  # a job the engine held when it died is answered as failed, not as still queued
        self._purge()
        return self._records.get(job_id)

    async def cancel(self, job_id: str) -> JobRecord | None:
        record = self._records.get(job_id)
        if record is None or record.status.finished:
            return record
        self.engine.cancel(job_id)
        # The engine confirms; until it does, a job that was only queued is canceled here at once so
        # the answer is final either way.
        self._apply(EngineEvent(job_id=job_id, type="canceled"))
        return record

    async def _current(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    async def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        return await self._watchers.wait(job_id, lambda: self._current(job_id), timeout)

    def events(self, job_id: str) -> AsyncIterator[tuple[str, dict]]:
        return self._watchers.follow(job_id, lambda: self._current(job_id))

    async def depth(self) -> int:
        return sum(1 for r in self._records.values() if not r.status.finished)

    async def refresh_catalog(self) -> None:
        """The models are this process's own: nothing to read again."""

    async def reload_store(self) -> None:
        """``JobQueue.reload_store``: this process's engine takes the new scan; the API validates against it."""
        if self.engine is None or not self.engine.alive:
            return
        fresh = await asyncio.to_thread(scan_store, self.settings.model_store)  # hashes cards' weights: off the loop
        # taken between two passes (and its models loaded); a stuck engine never takes it: stop waiting then
        self.models = await background.answer_while(self.engine.reload(fresh), self.alive)
        log.info("model store read again: serving %s", ", ".join(n for n, e in self.models.items() if e.ready))

    async def ready(self) -> bool:
        """Not while the engine is dead or stuck (``alive``): a balancer sends new work elsewhere meanwhile."""
        return self.engine is not None and self.alive() and any(e.ready for e in self.models.values())

    def alive(self) -> bool:
        """False once the engine thread has died (not stopped by ``close``): the jobs it held are failed then,
        once; and while it is stuck (busy in one turn past ``engine_stuck_s``): its jobs may still finish if it
        comes back before the process is restarted."""
        if self.engine is not None and self.engine.alive and not self._closing:
            busy = stuck_for(self.engine, self.settings)
            stuck = busy is not None
            if stuck and not self._stuck:
                log.critical("the engine has been in one turn for %.0f s: it is stuck; restart this process", busy)
            self._stuck = stuck
            if stuck:
                return False
        if self.engine is None or self.engine.alive or self._closing:
            return True
        if not self._failed_held:
            log.critical("the engine has stopped: failing the jobs it held; this process must be restarted")
            self._fail_held()
        return False

    async def close(self) -> None:
        self._closing = True
        if self._janitor_task is not None:
            await background.stop([self._janitor_task])
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)
