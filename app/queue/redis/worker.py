"""The Redis backend, worker side: a process (or a task beside an API node) that pulls jobs from the
Redis Streams of the models it serves (and those of jobs that need no model) through the consumer group and
runs them on its engine with continuous batching. Workers may serve different models: each publishes its own
catalog with its heartbeat (app.queue.redis.catalog), and reads only its own models' streams.

Leases: every entry a worker holds stays in the group's pending list; the worker renews it (XCLAIM to
itself, which resets its idle time) three times per lease. Entries idle longer than a lease belong to a
dead worker and are taken over (XAUTOCLAIM) by live ones, one at a time, each run alone (``_reclaim``); the
seed is in the spec, so the re-run draws the same image. A job delivered more than ``max_attempts`` times
has crashed that many workers and is failed instead. On SIGTERM a worker stops reading, finishes what it
holds within the grace time, and puts the rest back on the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import background
from app.jobs import (
    PRIORITY_LEVEL,
    EngineEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    aged_level,
    apply_event,
    hand_back,
    preview_payload,
)
from app.queue.protocol import NoModels, stuck_for
from app.queue.redis.catalog import publish, unserved
from app.queue.redis.keys import (
    FORGET_MODEL,
    GROUP,
    HIGH_FIRST,
    NEXT_ENTRIES,
    PRUNE,
    PRUNE_CONSUMERS,
    PUT_BACK,
    RENEW,
    REQUEUE,
    Keys,
)
from app.queue.redis.queue import unavailable
from app.queue.redis import pubsub
from app.queue.redis.records import RecordStore
from app.settings import Settings
from app.store.catalog import ModelEntry, scan_store

log = logging.getLogger(__name__)
SPEC = TypeAdapter(JobSpec)
# XAUTOCLAIM calls a takeover pass makes on one stream at most (each looks at 10 x COUNT pending entries, at
# least 10): ends a pass over a very long pending list, which the next heartbeat's pass goes on with
RECLAIM_CALLS = 100


@dataclass
class _Held:
    stream: str
    entry_id: str
    record: JobRecord
    alone: bool = False  # taken over from a silent worker: it runs alone here (_reclaim)


@contextlib.contextmanager
def redis_away_logged(consequence: str):
    """Go on when Redis is away (logging what follows from it); any other error is raised."""
    try:
        yield
    except Exception as exc:
        if not unavailable(exc):
            raise
        log.warning("Redis is away (%s: %s); %s", type(exc).__name__, exc, consequence)


class RedisWorker:
    def __init__(self, settings: Settings, redis: Redis, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.redis_prefix)
        self.records = RecordStore(redis, self.keys, settings.job_retention_s, settings.webhook_delivery_ttl_s)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.entries: dict[str, ModelEntry] = {}
        self.engine = None
        self.held: dict[str, _Held] = {}
        self._withdrawn: set[str] = set()  # models a reload in progress removes: their jobs are no longer taken
        self._events: asyncio.Queue = asyncio.Queue()
        self._room = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._intake: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: dict[str, _Held] = {}  # records changed by engine events, not yet written
        self._previews: list[EngineEvent] = []  # preview events not yet published
        self._reclaim_cursors: dict[str, str] = {}  # stream -> where the next look for silent workers' entries starts
        self._silent_waiting = False  # silent workers' entries wait: take nothing new until this worker is empty
        self._next_reclaim = 0.0  # monotonic time of the next look for silent workers' entries
        # monotonic time this worker last found Redis away: entries' idle times grew meanwhile for every worker
        # (Redis counts them on through a restart or a stall), so none is judged silent until a lease after it.
        # A worker starting cannot tell whether Redis was away just before (both restarted, or an outage while it
        # started): it starts as if it had just found Redis away, and live workers renew within that lease.
        self._redis_away_at = time.monotonic()
        self._next_entries = redis.register_script(NEXT_ENTRIES)
        self._renew = redis.register_script(RENEW)
        self._put_back = redis.register_script(PUT_BACK)
        self._requeue_script = redis.register_script(REQUEUE)
        self._prune = redis.register_script(PRUNE)
        self._prune_consumers = redis.register_script(PRUNE_CONSUMERS)
        self._forget_model = redis.register_script(FORGET_MODEL)
        self._up_since = time.time()  # a worker judges which models no worker serves only after worker_forget_s
        self.dead = asyncio.Event()  # set when the engine thread has died or is stuck: the process should exit
        self._loop_tick: float | None = None  # when this worker's event loop last ran its ticker (monotonic)

    @property
    def capacity(self) -> int:
        if self.settings.worker_jobs:
            return self.settings.worker_jobs
        return 2 * (self.engine.scheduler.max_batch if self.engine else self.settings.batch_cap("cpu"))

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_s * 1000)

    # -- life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Scan the store, load the models and start taking jobs. Raises NoModels, before loading anything,
        when DIFFUSION_PRELOAD names a model the store lacks (the default models may be other workers')."""
        from app.engine.engine import Engine  # torch lives behind this import

        self._loop = asyncio.get_running_loop()
        self._tasks = [self._duty(self._tick_once)]  # from the start: liveness while models load
        self.entries = scan_store(self.settings.model_store)
        if why := self.settings.unknown_models(set(self.entries), defaults=False):
            raise NoModels(why)
        engine = Engine(self.settings, self.entries, self._from_engine)
        await asyncio.to_thread(engine.start)
        self.engine = engine  # judged alive (or stuck) once it has started: not while it loads the models
        await self._create_groups()
        await self._beat()
        self._tasks += [
            self._duty(step) for step in (self._write_once, self._renew_once, self._listen_for_cancels, self._beat_once)
        ]
        self._intake = [self._duty(self._read_once)]
        log.info("worker %s serving %s", self.worker_id, self.served)

    async def reload_store(self) -> None:
        """Scan the store again and serve what it holds now: the engine takes the new scan (models changed or
        removed leave memory once their jobs are done), the streams of the models added get their group, and
        the catalog is announced at once, so API nodes route to this worker the jobs of what it now serves."""
        if self.engine is None or not self._engine_alive():
            return
        fresh = await asyncio.to_thread(scan_store, self.settings.model_store)  # hashes cards' weights
        gone = {name for name in self.served if name not in fresh or not fresh[name].ready}
        # First, a removed model is no longer served here: a job of it read while the engine takes the scan is
        # moved on for another worker (_start), not given to the engine, which would fail it as not served.
        # Its jobs taken before that and not started (waiting for memory, say) go back to their stream for
        # another worker; those running finish here on the weights they began with.
        self._withdrawn = gone
        try:
            for job_id, held in list(self.held.items()):
                if held.record.model in gone and held.record.status == JobStatus.queued:
                    del self.held[job_id]
                    self.engine.cancel(job_id)  # its "canceled" event is ignored: the job is no longer held
                    await self._hand_back(job_id, held)
                    self._room.set()
            self.entries = await background.answer_while(self.engine.reload(fresh), self._engine_alive)
        finally:  # a reload that failed leaves the models served as they were, and their jobs taken again
            self._withdrawn = set()
        await self._create_groups()
        await self._beat()
        log.info("model store read again: serving %s", self.served)

    def _duty(self, step) -> asyncio.Task:
        """``step`` run for ever (background.forever), noting when it finds Redis away."""

        async def noted() -> None:
            try:
                await step()
            except Exception as exc:
                if unavailable(exc):
                    self._redis_away_at = time.monotonic()
                raise

        noted.__name__ = step.__name__
        return background.forever(noted)

    @property
    def served(self) -> list[str]:
        """The models this worker serves now (one that fails to load here stops being served here)."""
        return sorted(name for name, entry in self.entries.items() if entry.ready and name not in self._withdrawn)

    @property
    def serves_anything(self) -> bool:
        return bool(self.served)

    @property
    def streams(self) -> list[tuple[str, str]]:
        """(priority, stream) of the job streams this worker reads, highest priority first."""
        return self.keys.streams(self.served)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking work, finish what is held within ``grace`` seconds, hand back the rest (a dead or stuck
        engine's: left for a takeover after their lease, which counts as an attempt)."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        await background.stop(self._intake)
        self._intake.clear()
        with redis_away_logged("entries read but not taken wait out their lease for a takeover"):
            await self._put_back_untaken()
        deadline = time.monotonic() + grace
        while self.held and time.monotonic() < deadline and not self.dead.is_set():
            await asyncio.sleep(0.05)
        unfinished = [(job_id, self.held.pop(job_id)) for job_id in list(self.held)]
        for job_id, _ in unfinished:
            self.engine.cancel(job_id)  # its "canceled" event is ignored: the job is no longer held
        if self.dead.is_set():
            # A dead or stuck engine: its jobs stay pending here until their lease runs out, and the worker
            # that takes one over counts a delivery more, as after a crash; so a job that hangs every device
            # is failed after max_attempts instead of being handed from worker to worker for ever.
            log.warning(
                "leaving %d job(s) to be taken over after their lease: %s", len(unfinished), list(dict(unfinished))
            )
            unfinished = []
        await asyncio.sleep(0)  # let the last events be written, so none lands after a hand-back
        deadline = time.monotonic() + 5
        while (not self._events.empty() or self._dirty) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for job_id, held in unfinished:
            with redis_away_logged(f"job {job_id}: live workers take it over after its lease"):
                await self._hand_back(job_id, held)
        await background.stop(self._tasks)
        self._tasks.clear()
        with redis_away_logged("this worker's consumers are deleted by another's heartbeat once idle"):
            await self._delete_consumers(mine_now=True)
        try:
            with redis_away_logged("this worker's heartbeat goes stale by itself"):
                await self.redis.hdel(self.keys.workers, self.worker_id)  # its catalog stays, for a restart
        finally:
            if self.engine is not None:
                await asyncio.to_thread(self.engine.stop)

    async def _put_back_untaken(self) -> None:
        """Put back on their streams the entries this worker read but did not take: a stop that lands while
        the intake goes through one read's entries leaves the rest pending here, unheld and unrenewed. Left
        so, they would wait out a lease and the next worker would count each as a crash (a job failed after
        ``max_attempts`` clean restarts, as in a rolling deploy). Each goes back as a new entry, so no
        delivery is counted, in one step with the check that this worker still owns it (PUT_BACK). An entry
        delivered before (taken over from a silent worker, not yet started here) is left for the next
        takeover, which counts it: a new entry would forget the crashes it has seen."""
        taken = {held.entry_id for held in self.held.values()}
        for _, stream in self.streams:
            try:
                pending = await self.redis.xpending_range(
                    stream, GROUP, min="-", max="+", count=10_000, consumername=self.worker_id
                )
            except ResponseError as exc:
                if unavailable(exc):
                    raise
                continue  # NOGROUP: the stream went with Redis's data, and what was pending on it
            for entry in pending:
                entry_id = entry["message_id"].decode()
                if entry_id in taken or entry["times_delivered"] > 1:
                    continue
                if await self._put_back(keys=[stream], args=[GROUP, self.worker_id, entry_id, self.keys.job("")]) == 1:
                    log.info("put entry %s back on %s: read here but not taken before the stop", entry_id, stream)

    async def _hand_back(self, job_id: str, held: _Held) -> None:
        """Put a job this worker will not finish back on its stream, for the next worker, its record queued
        again first (so no later write of this worker's can undo the next worker's). Only while this worker
        still owns its entry, which the check renews (no takeover for a lease): one cut off past its lease
        may have lost the job to another worker, which runs it now."""
        try:
            lost = await self._renew(keys=[held.stream], args=[GROUP, self.worker_id, held.entry_id])
        except ResponseError as exc:  # NOGROUP: the stream or its group went (Redis lost its data): no owner
            if unavailable(exc):
                raise
            lost = []
        if lost:
            log.warning("job %s: taken over by another worker while this one was cut off; not handed back", job_id)
            return
        hand_back(held.record)
        written = await self.records.update(held.record)
        if written != 1:  # -1: its record is gone; 0: it is final (canceled while it ran here)
            log.warning("job %s: its record is %s; not handing it back", job_id, "gone" if written == -1 else "final")
            await self._retire(held.stream, held.entry_id, forget=job_id)
            return
        await self._requeue(job_id, held.stream, held.entry_id, to=held.stream)
        log.info("handed job %s back to the queue", job_id)

    async def _requeue(self, job_id: str, stream: str, entry_id: str, *, to: str, model: str | None = None) -> None:
        """Queue a job again at the end of stream ``to``, taking its entry off ``stream``, in one step (REQUEUE:
        its job hash records the new entry, for a cancel before any worker reads it)."""
        await self._requeue_script(
            keys=[stream, to, self.keys.job(job_id), self.keys.queued_models],
            args=[GROUP, entry_id, job_id, model or ""],
        )

    # -- taking jobs --------------------------------------------------------------------------------
    def _free(self) -> int:
        if any(held.alone for held in self.held.values()):  # a job taken over runs alone (_reclaim)
            return 0
        return max(0, self.capacity - len(self.held))

    async def _wait_for_room(self) -> None:
        while self._free() == 0:
            self._room.clear()
            await self._room.wait()

    async def _create_groups(self) -> None:
        for _, stream in self.streams:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)

    async def _regroup(self, command: str, exc: ResponseError) -> None:
        """A stream or its group was deleted under us (NOGROUP): recreate them. Redis may have lost its data,
        the catalog too, so announce it again now. An error that says Redis cannot serve now is raised on."""
        if unavailable(exc):
            raise exc
        log.warning("%s: %s", command, exc)
        await self._create_groups()
        self._reclaim_cursors.clear()
        if self._engine_alive():
            await self._beat()

    async def stream_order(self) -> list[str]:
        """The job streams that have entries waiting, in the order to read them: by the priority of their
        next entry, raised by how long it has waited (the engine's aging rule), the longest wait first."""
        streams = self.streams
        now_ms, *heads = await self._next_entries(keys=[stream for _, stream in streams], args=[GROUP])
        ranked = []
        for (priority, stream), head in zip(streams, heads):
            if head:
                waited = (int(now_ms) - int(head.split(b"-")[0])) / 1000
                ranked.append((-aged_level(PRIORITY_LEVEL[priority], waited), -waited, stream))
        return [stream for *_, stream in sorted(ranked)]

    async def _read(self, streams: dict[str, str], count: int, block: int | None) -> int:
        try:
            reply = await self.redis.xreadgroup(GROUP, self.worker_id, streams, count=count, block=block)
        except ResponseError as exc:
            await self._regroup("xreadgroup", exc)
            return 0
        taken = 0
        for stream, messages in reply or []:
            for entry_id, fields in messages:
                job_id = fields.get(b"job", b"").decode()
                await self._take(stream.decode(), entry_id.decode(), job_id, delivered=1)
                taken += 1
        return taken

    async def _read_once(self) -> None:
        """Fill the free places: first the jobs of workers gone silent (they have waited longest), each alone
        once this worker holds nothing (``_reclaim``); while they wait, nothing new is read. Then from the streams
        in priority order; when none has anything, wait on all."""
        if not self._engine_alive():  # it would hold them until their lease ran out: leave them to live workers
            await asyncio.sleep(self.settings.heartbeat_s)
            return
        await self._wait_for_room()
        if time.monotonic() >= self._next_reclaim:  # an entry goes silent after a lease: look once a heartbeat
            self._next_reclaim = time.monotonic() + self.settings.heartbeat_s
            await self._reclaim()
        if self._free() == 0:  # a job taken over, which runs alone
            return
        if self._silent_waiting:  # let what is held finish, then take one of them over (alone), at once
            if not self.held:
                self._next_reclaim = 0.0
                return
            self._room.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._room.wait(), self.settings.heartbeat_s)
            return
        taken = 0
        for stream in await self.stream_order():
            if self._free() == 0:
                return
            taken += await self._read({stream: ">"}, count=self._free(), block=None)
        if taken == 0:
            await self._read({stream: ">" for _, stream in self.streams}, count=1, block=1000)

    async def _reclaim(self) -> None:
        """Take over an entry whose worker has not renewed it for a lease (it died or hung), to run alone: only
        when this worker holds nothing, and it takes nothing else until that job is done (``_free``). Which of
        a dead worker's jobs killed it is not known, and a takeover counts a crash against each job taken; run
        together, a job that crashes every worker took the jobs beside it down with it, failing them after
        ``max_attempts`` crashes too. Run alone, a crash counts against that job only. While such entries
        wait, a worker that holds jobs reads no new ones (``_read_once``), so that it empties and takes them.

        XAUTOCLAIM looks at no more than 10 x COUNT pending entries a call, so one call a heartbeat took minutes
        to reach a dead worker's entries behind live workers' ones: each pass goes on from where the last call
        stopped until the stream's end, or until an entry is taken.

        Not within a lease of finding Redis away: Redis counts an entry's idle time on while it is down or
        stalled (its log keeps the last delivery's time across a restart), so after an outage longer than a
        lease every live worker's entries look silent until it renews them, which it does at once (_renew_once).
        Taking them then restarted running jobs elsewhere and counted a crash against each."""
        was_waiting, self._silent_waiting = self._silent_waiting, False
        if time.monotonic() - self._redis_away_at < self.settings.lease_s:
            return
        if self.held:
            self._silent_waiting = await self._silent_entries_wait()
            if self._silent_waiting and not was_waiting:
                log.info("silent workers' jobs wait: no new jobs read until the %d held here are done", len(self.held))
            return
        for _, stream in self.streams:
            for _ in range(RECLAIM_CALLS):
                try:
                    cursor, claimed, *_ = await self.redis.xautoclaim(
                        stream,
                        GROUP,
                        self.worker_id,
                        min_idle_time=self.lease_ms,
                        start_id=self._reclaim_cursors.get(stream, "0-0"),
                        count=1,
                    )
                except ResponseError as exc:
                    await self._regroup("xautoclaim", exc)
                    return
                cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
                self._reclaim_cursors[stream] = cursor
                for entry_id, fields in claimed:
                    entry_id = entry_id.decode()
                    pending = await self.redis.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
                    delivered = pending[0]["times_delivered"] if pending else 1
                    log.warning("took over job entry %s (delivery %d) from a silent worker", entry_id, delivered)
                    job_id = fields.get(b"job", b"").decode()
                    await self._take(stream, entry_id, job_id, delivered=delivered)
                    if job_id in self.held:  # it runs alone; others that wait are looked for once it is done
                        self.held[job_id].alone, self._silent_waiting = True, True
                        return
                if cursor == "0-0":  # the whole pending list looked at
                    break

    async def _silent_entries_wait(self) -> bool:
        """Whether an entry of another worker on this worker's streams has not been renewed for a lease."""
        for _, stream in self.streams:
            try:  # this worker's own entries (a renewal late) among the first at most: one more than it holds
                idle = await self.redis.xpending_range(
                    stream, GROUP, min="-", max="+", count=len(self.held) + 1, idle=self.lease_ms
                )
            except ResponseError as exc:
                await self._regroup("xpending", exc)
                return False
            if any(entry["consumer"].decode() != self.worker_id for entry in idle):
                return True
        return False

    async def _take(self, stream: str, entry_id: str, job_id: str, *, delivered: int) -> None:
        if job_id in self.held:  # a job this worker runs already is not started twice (a takeover, which could
            return  # take back an entry of its own whose renewal lagged, is made only by a worker holding nothing)
        try:
            await self._start(stream, entry_id, job_id, delivered=delivered)
        except Exception as exc:  # a malformed entry or record must not crash every worker in turn
            if unavailable(exc):  # Redis away, not a bad job: the entry stays pending and is taken over later
                if self.held.pop(job_id, None) is not None:
                    self.engine.cancel(job_id)
                raise
            log.error("job entry %s (%r) is unusable: %s", entry_id, job_id, exc)
            if self.held.pop(job_id, None) is not None:  # the engine has it: it would run a job failed here
                self.engine.cancel(job_id)
            await self._fail_entry(stream, entry_id, job_id, f"unusable job: {exc}")

    async def _start(self, stream: str, entry_id: str, job_id: str, *, delivered: int) -> None:
        raw_record, status, raw_spec = await self.redis.hmget(self.keys.job(job_id), "record", "status", "spec")
        if raw_record is None or status is None or status.decode() in ("succeeded", "failed", "canceled"):
            await self._retire(stream, entry_id, forget=job_id)  # expired, or canceled while it waited
            return
        record = JobRecord.model_validate_json(raw_record)
        if delivered - 1 >= self.settings.max_attempts:
            attempts = self.settings.max_attempts
            await self._fail_record(
                record, f"job crashed workers {delivered - 1} times (max_attempts {attempts}); not retried"
            )
            await self._retire(stream, entry_id)
            return
        spec = SPEC.validate_json(raw_spec)
        if spec.model is not None and spec.model not in self.served:
            await self._reroute(stream, entry_id, job_id, spec)
            return
        self.held[job_id] = _Held(stream=stream, entry_id=entry_id, record=record)
        self.engine.submit(job_id, spec)
        if (await self.redis.hget(self.keys.job(job_id), "status") or b"").decode() == "canceled":
            self.engine.cancel(job_id)  # canceled while we were picking it up: the broadcast came too early

    async def _reroute(self, stream: str, entry_id: str, job_id: str, spec: JobSpec) -> None:
        """Put a job of a model this worker does not serve at the end of that model's stream, for a worker that
        does: from a stream every worker reads (queued before jobs went on their model's stream), or from the
        model's own (read just before a reload removed the model here)."""
        await self._requeue(job_id, stream, entry_id, to=self.keys.job_stream(spec), model=spec.model)
        log.info("job %s: moved to the stream of model %s, which this worker does not serve", job_id, spec.model)

    async def _fail_entry(self, stream: str, entry_id: str, job_id: str, error: str) -> None:
        """Fail the job of an entry that will not run, and take the entry off its stream."""
        try:
            record = await self.records.get(job_id) if job_id else None
            if record is not None:
                await self._fail_record(record, error)
        except Exception as exc:  # the record itself may be what is broken; Redis away is not that
            if unavailable(exc):
                raise  # the entry stays: failed on a later look, not taken off with its job still queued
            log.warning("job %s: its record could not be failed (%s); its entry is taken off", job_id, exc)
        await self._retire(stream, entry_id, forget=job_id or None)

    async def _fail_record(self, record: JobRecord, error: str) -> None:
        """Fail a job this worker cannot run, by the same rule as the engine's events."""
        if apply_event(record, EngineEvent(job_id=record.id, type="failed", error=error)):
            await self.records.update(record)

    async def _retire(self, stream: str, entry_id: str, *, forget: str | None = None) -> None:
        """Take an entry off its stream; ``forget``: a job that will not run, whose pixels the queue releases."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            if forget:
                pipe.hdel(self.keys.held, forget)
            await pipe.execute()

    # -- reporting ----------------------------------------------------------------------------------
    def _from_engine(self, events: list[EngineEvent]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._events.put_nowait, events)

    async def _write_once(self) -> None:
        """Write the records the engine's events changed; on failure they stay dirty and are retried."""
        if not self._dirty and not self._previews:
            for event in await self._events.get():
                held = self.held.get(event.job_id)
                if held is not None and event.type == "preview":
                    self._previews.append(event)
                elif held is not None and apply_event(held.record, event):
                    self._dirty[event.job_id] = held
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in self._previews:  # straight to the job's event stream; no record changes
                kind, data = preview_payload(event)
                pipe.publish(self.keys.events, json.dumps({"job_id": event.job_id, "kind": kind, "data": data}))
            updates = {}  # job ID -> the position of its record update's answer
            for job_id, held in self._dirty.items():  # a final record takes its entry off in the same step
                updates[job_id] = len(pipe.command_stack)
                await self.records.update(held.record, pipe, entry=(held.stream, held.entry_id))
            answers = await pipe.execute()
        vanished = [job_id for job_id, at in updates.items() if answers[at] == -1]
        for job_id in vanished:
            await self._drop_vanished(job_id)
        for job_id, at in updates.items():
            if job_id in vanished:  # dropped above: nothing to count, nothing to stop
                continue
            self.records.written(self._dirty[job_id].record, answers[at])
            if answers[at] == 0 and not self._dirty[job_id].record.status.finished:
                # Final elsewhere while it runs here: canceled by an API node whose broadcast this worker
                # missed, or finished by a worker that took it over. Stop it; its "canceled" retires it.
                self.engine.cancel(job_id)
        finished = [job_id for job_id, held in self._dirty.items() if held.record.status.finished]
        self._dirty.clear()
        self._previews.clear()
        for job_id in finished:
            self.held.pop(job_id, None)
        if finished:
            self._room.set()

    async def _drop_vanished(self, job_id: str) -> None:
        """A job whose record is gone (Redis restarted without its data, or the record expired): nobody can
        ask for its result, so stop computing it and take its entry off the stream."""
        held = self.held.pop(job_id, None)
        self._dirty.pop(job_id, None)
        if held is None:
            return
        log.warning("job %s: its record is gone from Redis; dropping the job", job_id)
        self.engine.cancel(job_id)
        await self._retire(held.stream, held.entry_id, forget=job_id)
        self._room.set()

    def alive(self) -> bool:
        """False once the engine thread has died or is stuck."""
        return self._engine_alive()

    def _engine_trouble(self) -> str | None:
        """What is wrong with the engine, if anything: it died, or it is stuck in one turn."""
        engine = self.engine
        if engine is None:
            return None
        if not engine.alive:
            return "the engine thread died: no more lease renewals or heartbeats; live workers take the jobs over"
        if (busy := stuck_for(engine, self.settings)) is not None:
            return (
                f"the engine has been in one turn for {busy:.0f} s (DIFFUSION_ENGINE_STUCK_S="
                f"{self.settings.engine_stuck_s:g}): it is stuck; this worker stops; live workers take its jobs "
                "over after their lease"
            )
        return None

    def _engine_alive(self) -> bool:
        if not self.dead.is_set() and (trouble := self._engine_trouble()) is not None:
            log.critical(trouble)
            self.dead.set()
        return not self.dead.is_set()

    def live(self) -> bool:
        """The worker's liveness, asked from its metrics thread (``/healthz`` on the metrics port): its event loop
        turns (a blocked loop renews no lease and reads no job, yet the thread that answers lives on), and its
        engine has neither died nor got stuck."""
        tick = self._loop_tick
        if tick is not None and time.monotonic() - tick > self.loop_stale_s:
            return False
        return not self.dead.is_set() and self._engine_trouble() is None

    def ready(self) -> bool:
        """Taking jobs: its models loaded (the intake runs from the end of ``start`` until ``stop``), at least
        one of them served (a reload may leave none: the store emptied or unmounted), and live."""
        return bool(self._intake) and self.serves_anything and self.live()

    @property
    def loop_stale_s(self) -> float:
        """An event loop whose ticker has not run for this long is blocked."""
        return max(30.0, 6 * self.settings.heartbeat_s)

    async def _tick_once(self) -> None:
        self._loop_tick = time.monotonic()
        self._engine_alive()  # a stuck engine is noticed even while no job is held
        await asyncio.sleep(min(1.0, self.settings.heartbeat_s))

    async def _renew_once(self) -> None:
        """Renew the leases of the jobs held here, then wait a heartbeat; stop those another worker has taken
        over meanwhile. Renewing first: after Redis was away (a failed renewal), the next comes at once."""
        await self._renew_held()
        await asyncio.sleep(self.settings.heartbeat_s)

    async def _renew_held(self) -> None:
        by_stream: dict[str, dict[str, str]] = {}  # stream -> entry ID -> job ID
        for job_id, held in self.held.items():
            by_stream.setdefault(held.stream, {})[held.entry_id] = job_id
        if by_stream and self._engine_alive():
            for stream, jobs in by_stream.items():
                lost = await self._renew(keys=[stream], args=[GROUP, self.worker_id, *jobs])
                for entry_id in lost:
                    job_id = jobs[entry_id.decode() if isinstance(entry_id, bytes) else entry_id]
                    held = self.held.get(job_id)
                    if held is None or held.record.status.finished:  # retired here a moment ago
                        continue
                    log.warning("job %s was taken over by another worker while this one was cut off", job_id)
                    del self.held[job_id]
                    self.engine.cancel(job_id)  # its "canceled" event is ignored: the job is no longer held
                    self._room.set()

    async def _listen_for_cancels(self) -> None:
        async for data in pubsub.messages(self.redis, self.keys.cancel):
            if data.decode() in self.held:
                self.engine.cancel(data.decode())

    async def _beat(self) -> None:
        """Publish this worker's catalog and heartbeat (API nodes merge the workers' catalogs), forget the
        workers silent for ``worker_forget_s``, and fail the jobs queued for models no worker serves (once this
        worker has been up that long itself)."""
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.catalogs, self.worker_id, publish(self.entries))
            pipe.hset(self.keys.announced, self.worker_id, now)
            pipe.hset(self.keys.workers, self.worker_id, now)
            await pipe.execute()
        cutoff = now - self.settings.worker_forget_s
        forgotten = await self._prune(keys=[self.keys.workers, self.keys.announced, self.keys.catalogs], args=[cutoff])
        if forgotten:
            log.warning("forgot workers silent for %.0f s: %s", self.settings.worker_forget_s, forgotten)
        await self._delete_consumers(mine_now=False)
        if now - self._up_since >= self.settings.worker_forget_s:  # after a whole deployment was down, the
            await self._fail_unserved(cutoff)  # workers of some models may just be slower to start

    async def _delete_consumers(self, *, mine_now: bool) -> None:
        """Delete the consumers on this worker's streams that hold nothing and were idle for ``worker_forget_s``
        (stopped or dead workers'), and with ``mine_now`` (a clean stop) this worker's own that hold nothing."""
        streams = [stream for _, stream in self.streams]
        idle_ms = int(self.settings.worker_forget_s * 1000)
        await self._prune_consumers(keys=streams, args=[GROUP, idle_ms, self.worker_id if mine_now else ""])

    async def _fail_unserved(self, cutoff: float) -> None:
        """Fail the jobs still queued for the models no worker serves: none announced them since ``cutoff``,
        or each that did failed to load them. Nobody would run those jobs, and they hold places in the queue."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.smembers(self.keys.queued_models).hgetall(self.keys.catalogs).hgetall(self.keys.announced)
            queued, catalogs, announced = await pipe.execute()
        for model, why in unserved({m.decode() for m in queued}, catalogs, announced, since=cutoff).items():
            if why is None:
                why = f"every worker that served it has been gone for {self.settings.worker_forget_s:.0f} s"
            error = f"model {model!r} is not served by any worker: {why}"
            streams = [self.keys.stream(priority, model) for priority in HIGH_FIRST]
            for stream in streams:
                # a job that a live worker holds (its lease renewed) finishes there: that worker stopped
                # serving the model after taking it (a reload), or is about to announce it
                try:
                    pending = await self.redis.xpending_range(stream, GROUP, min="-", max="+", count=10_000)
                except ResponseError as exc:  # no such stream or group: nothing is held on it
                    if unavailable(exc):
                        raise
                    pending = []
                held = {p["message_id"] for p in pending if p["time_since_delivered"] < self.lease_ms}
                for entry_id, fields in await self.redis.xrange(stream):
                    if entry_id in held:
                        continue  # its entry keeps the model in the set: looked at again next time
                    job_id = fields.get(b"job", b"").decode()
                    await self._fail_entry(stream, entry_id.decode(), job_id, error)
                    log.warning("job %s failed: %s", job_id, error)
            # last, and only once its streams are empty: a pass cut short (Redis away, the worker stopped)
            # leaves the model in the set, so its jobs left on the streams are looked at again next time
            await self._forget_model(keys=[self.keys.queued_models, *streams], args=[model])

    async def _beat_once(self) -> None:
        await asyncio.sleep(self.settings.heartbeat_s)
        if self._engine_alive():
            await self._beat()
