"""The Redis backend, API side: stateless nodes that put jobs on a Redis Stream and read records back.

Any node can answer for any job: records live in Redis, and every change is published on one channel
that each node follows with a single subscription, handing changes to its local watchers (SSE streams,
sync waits). The model catalog is what the workers publish, merged (app.queue.redis.catalog); a job goes on
the stream of its model, which only the workers serving that model read.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import socket
import time
from typing import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ClusterDownError, MasterDownError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import background
from app.jobs import TRANSIENT_EVENTS, EngineEvent, JobRecord, JobSpec, JobStatus, apply_event
from app.logs import url_for_log
from app.metrics import job_submitted
from app.queue.protocol import (
    Admission,
    IdempotencyConflict,
    QueueFull,
    QueueUnavailable,
    QueueUnreachable,
    TooManyJobs,
)
from app.queue.redis.catalog import merge
from app.queue.redis.keys import ADMIT, CLAIM_MARGIN_S, DROP_UNREAD, GROUP, REPLACE_CLAIM, Keys
from app.queue.redis.outbox import RedisOutbox
from app.queue.redis import pubsub
from app.queue.redis.records import RecordStore
from app.queue.watch import Watchers
from app.settings import Settings
from app.store.catalog import ModelEntry

log = logging.getLogger(__name__)
CATALOG_REFRESH_S = 1.0
READY_TIMEOUT_S = 1.0
CLAIM_WRITE_S = 2.0  # an Idempotency-Key claimed this recently may still be writing its job's record
ADMIT_TRIES, ADMIT_AGAIN_S = 2, 0.05  # a job's admission whose connection dropped is sent once more, at once
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)  # BusyLoadingError is a ConnectionError
# errors Redis answers while it cannot take writes: a replica after a failover, maxmemory, a lost master.
# redis-py raises most as classes of their own and cuts the code from the message ("OOM command not
# allowed..." arrives as OutOfMemoryError("command not allowed...")); the others keep it in the message.
# MISCONF: writes refused since a snapshot failed to save (a full disk; stop-writes-on-bgsave-error, the
# default). BUSY: a long script or function holds the server (every command waits for it).
UNAVAILABLE_ERRORS = (OutOfMemoryError, ReadOnlyError, MasterDownError, TryAgainError, ClusterDownError)
UNAVAILABLE_REPLIES = frozenset(
    {"READONLY", "OOM", "MASTERDOWN", "LOADING", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN", "MISCONF", "BUSY"}
)
# redis-py puts a pipeline's or a transaction's failed command in front of the reply it got
_WRAPPED_REPLY = re.compile(r"(?:of pipeline caused error|Transaction discarded because of): (\S+)")


# A command unanswered this long fails (QueueUnavailable: 503), whichever redis-py's default is
COMMAND_TIMEOUT_S = 5.0


def connect(url: str) -> Redis:
    """A client that gives up connecting after 2 s, gives up on a command unanswered for COMMAND_TIMEOUT_S (a
    frozen server, a stalled fsync: the caller then answers 503 instead of hanging), and notices a peer gone
    silent (a host that vanished without closing its connections) by TCP keepalive within about 15 s. Blocking
    reads wait at most 1 s (the worker's XREADGROUP), and a subscription's wait for its next message has no
    limit (redis-py 8 and later: earlier ones applied the command timeout to it too, hence ``redis>=8``)."""
    options = {}
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options[getattr(socket, name)] = value
    return Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=COMMAND_TIMEOUT_S,
        socket_keepalive=True,
        socket_keepalive_options=options,
    )


async def reach(redis: Redis, settings: Settings) -> None:
    """Wait until Redis answers, for up to ``queue_wait_s`` (a node started beside Redis may come up first);
    QueueUnreachable, with one line saying where and why, when it does not."""
    deadline, where = time.monotonic() + settings.queue_wait_s, url_for_log(settings.queue_url)
    while True:
        try:
            await redis.ping()
            return
        except Exception as exc:
            if not unavailable(exc):
                raise
            left = deadline - time.monotonic()
            reason = f"{type(exc).__name__}: {exc}"
            if left <= 0:
                raise QueueUnreachable(
                    f"cannot reach the job queue at {where} within {settings.queue_wait_s:g} s "
                    f"(DIFFUSION_QUEUE_WAIT_S): {reason}"
                ) from None
            log.warning(
                "the job queue at %s does not answer yet (%s); waiting up to %.0f s more",
                where,
                reason,
                left,
            )
            await asyncio.sleep(min(1.0, left))


def unavailable(exc: Exception) -> bool:
    """Whether ``exc`` says Redis cannot serve now (rather than that the request was wrong)."""
    if isinstance(exc, REDIS_DOWN + UNAVAILABLE_ERRORS):
        return True
    return isinstance(exc, ResponseError) and reply_code(exc) in UNAVAILABLE_REPLIES


def reply_code(exc: ResponseError) -> str:
    """The code of the error Redis replied (its first word: "BUSY", not "BUSYGROUP"), also where redis-py
    wrapped the reply in a pipeline's or transaction's message; redis-py 6 and later keep it as status_code
    (which an aborted transaction's error holds as "EXECABORT", so the wrapped reply is read first)."""
    message = str(exc)
    wrapped = _WRAPPED_REPLY.findall(message)  # the last: the command's text before it may hold anything
    if wrapped:
        return wrapped[-1].upper()
    return (getattr(exc, "status_code", None) or message.split(" ", 1)[0]).upper()


def as_queue_unavailable(exc: Exception, what: str = "") -> QueueUnavailable | None:
    """``exc`` as QueueUnavailable (the API answers 503 with Retry-After) when it says Redis is away; None
    when it is any other error."""
    return QueueUnavailable(f"{what}{type(exc).__name__}: {exc}") if unavailable(exc) else None


def reachable(method):
    """Redis being away is QueueUnavailable, not an internal error."""

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            if (away := as_queue_unavailable(exc)) is not None:
                raise away from exc
            raise

    return wrapper


class RedisJobQueue:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.redis_prefix)
        self.records = RecordStore(redis, self.keys, settings.job_retention_s, settings.webhook_delivery_ttl_s)
        self._admit = redis.register_script(ADMIT)
        self._replace_claim = redis.register_script(REPLACE_CLAIM)
        self._drop_unread = redis.register_script(DROP_UNREAD)
        self.outbox = RedisOutbox(redis, self.keys, settings.webhook_delivery_ttl_s)
        self.models: dict[str, ModelEntry] = {}
        self._watchers = Watchers()
        self._tasks: list[asyncio.Task] = []
        self._workers_seen = 0.0
        self.embedded = None  # a RedisWorker running in this process, when settings ask for one
        self.durable = True

    @classmethod
    async def open(cls, settings: Settings) -> "RedisJobQueue":
        queue = cls(settings, connect(settings.queue_url))
        try:
            await reach(queue.redis, settings)
        except BaseException:
            await queue.redis.aclose()
            raise
        await queue.refresh_catalog()
        queue._tasks = [background.forever(queue._follow_events), background.forever(queue._refresh_later)]
        return queue

    # -- background ---------------------------------------------------------------------------------
    @reachable
    async def refresh_catalog(self) -> None:
        """The workers' catalogs, merged, and their latest heartbeat, read together (one MULTI) so that they
        agree."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.catalogs).hgetall(self.keys.announced).hvals(self.keys.workers)
            catalogs, announced, beats = await pipe.execute()
        now = time.time()
        self.models = merge(
            catalogs, announced, since=now - self.settings.worker_forget_s, live_since=now - self.fresh_s
        )
        self._workers_seen = max((float(b) for b in beats), default=0.0)

    async def reload_store(self) -> None:
        """The embedded worker's store, if this node runs one; the catalog then comes from the announcements."""
        if self.embedded is not None:
            await self.embedded.reload_store()
            await self.refresh_catalog()

    async def _refresh_later(self) -> None:
        """Refresh the catalog after a while (on an error, background.forever keeps the last one and retries)."""
        await asyncio.sleep(CATALOG_REFRESH_S)
        await self.refresh_catalog()

    async def _follow_events(self) -> None:
        """Hand the engines' events to this node's waiters (an error ends the subscription; it is renewed)."""
        async for data in pubsub.messages(self.redis, self.keys.events):
            event = json.loads(data)
            # a final event always: the watchers then drop a late preview of the job (watch.py)
            if self._watchers.wants(event["job_id"], event["kind"]) or event["kind"] not in TRANSIENT_EVENTS:
                self._watchers.notify(event["job_id"], (event["kind"], event["data"]))

    # -- protocol ----------------------------------------------------------------------------------
    @reachable
    async def submit(
        self,
        spec: JobSpec,
        admission: Admission = Admission(),
    ) -> JobRecord:
        record = JobRecord.new(spec, admission.owner, admission.webhook)
        key = self.keys.idempotency(admission.scoped_key) if admission.scoped_key else None
        if key:
            existing = await self._claim(key, f"{record.id}:{admission.fingerprint}", admission.fingerprint)
            if existing is not None:
                return existing
        admitted = await self._admit_once(
            record.id,
            keys=[self.keys.job(record.id), self.keys.held, self.keys.job_stream(spec), self.keys.queued_models],
            args=[
                record.model_dump_json(),
                spec.model_dump_json(),
                record.id,
                self.settings.queue_limit,
                record.pixels,
                self.settings.queue_max_pixels,
                self.keys.job(""),
                admission.owner or "",
                "" if admission.max_jobs is None else admission.max_jobs,
                admission.webhook.url if admission.webhook else "",
                ",".join(admission.webhook.events) if admission.webhook else "",
                spec.model or "",
                key or "",
            ],
        )
        if admitted != 1:
            if key:
                await self.redis.delete(key)
            if admitted == -1:
                raise TooManyJobs(retry_after=max(1, int(self.settings.heartbeat_s)))
            raise QueueFull(retry_after=max(1, int(self.settings.heartbeat_s)))
        job_submitted(record)
        return record

    async def _admit_once(self, job_id: str, keys: list[str], args: list) -> int:
        """ADMIT, sent once more when the connection dropped before its reply came: Redis may have run it, and
        the API would have answered 503 while the job was queued and ran unseen (a client sending the request
        again then ran it twice). A second run of ADMIT for the same job ID answers 1 and writes nothing. A
        timeout is not sent again (a frozen Redis would hold the request for another timeout before its 503);
        an Idempotency-Key covers that case."""
        for _ in range(ADMIT_TRIES - 1):
            try:
                return await self._admit(keys=keys, args=args)
            except RedisConnectionError:
                log.warning("the job queue's connection dropped while admitting job %s; sending it again", job_id)
                await asyncio.sleep(ADMIT_AGAIN_S)
        return await self._admit(keys=keys, args=args)

    @property
    def _claim_ttl(self) -> int:
        """How long an Idempotency-Key's claim lasts until its job is admitted (then while the job runs, and
        once it has ended past its record's retention: ADMIT, UPDATE_RECORD)."""
        return int(self.settings.job_retention_s) + CLAIM_MARGIN_S

    async def _claim(self, key: str, claim: str, fingerprint: str) -> JobRecord | None:
        """Claim an Idempotency-Key for this request (None), or the job it already names. A claim that names
        no job any more is replaced in one step with the check that it still holds what was read
        (REPLACE_CLAIM), so of two requests replaying the key at once only one makes a job."""
        while True:
            if await self.redis.set(key, claim, nx=True, ex=self._claim_ttl):
                return None
            existing, stale = await self._claimed_job(key, fingerprint)
            if existing is not None:
                return existing
            if stale is not None and await self._replace_claim(keys=[key], args=[stale, claim, self._claim_ttl]):
                return None
            # the claim expired meanwhile, or another request replaced it: read it again

    async def _claimed_job(self, key: str, fingerprint: str) -> tuple[JobRecord | None, bytes | None]:
        """The job an Idempotency-Key names (IdempotencyConflict if it was claimed for another request), or
        (None, the claim) when it names none any more (its record expired before the claim did, or was
        evicted), or (None, None) when there is no claim. A request that claimed the key a moment ago may
        still be writing its record: for a claim that recent (by the time left to it, which only a claim not
        yet admitted has at its first TTL; no node's clock matters), wait briefly."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                claim, left_ms = await pipe.get(key).pttl(key).execute()
            if claim is None:
                return None, None
            job_id, _, claimed_for = claim.decode().partition(":")
            if claimed_for != fingerprint:
                raise IdempotencyConflict()
            record = await self.get(job_id)
            if record is not None:
                return record, None
            if not 0 <= self._claim_ttl - left_ms / 1000 <= CLAIM_WRITE_S:
                return None, claim
            await asyncio.sleep(0.05)

    @reachable
    async def get(self, job_id: str) -> JobRecord | None:
        return await self.records.get(job_id)

    @reachable
    async def cancel(self, job_id: str) -> JobRecord | None:
        record = await self.get(job_id)
        if record is None or record.status.finished:
            return record
        was_queued = record.status == JobStatus.queued
        apply_event(record, EngineEvent(job_id=job_id, type="canceled"))  # the same rule as the worker's events
        await self.records.update(record)
        try:
            if was_queued:  # its entry, unless a worker has read it, which retires it
                await self._drop_unread(keys=[self.keys.job(job_id)], args=[GROUP])
            await self.redis.publish(self.keys.cancel, job_id)  # the worker holding it drops its rows
            return await self.records.get(job_id)
        except REDIS_DOWN:  # the cancel is written: the worker stops the job at its next write regardless
            return record

    @reachable
    async def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        return await self._watchers.wait(job_id, lambda: self.get(job_id), timeout)

    async def events(self, job_id: str) -> AsyncIterator[tuple[str, dict]]:
        try:
            async for item in self._watchers.follow(job_id, lambda: self.get(job_id)):
                yield item
        except QueueUnavailable as exc:  # the stream has begun: end it; the client reconnects or polls
            log.warning("event stream of job %s ended: %s", job_id, exc)

    @reachable
    async def depth(self) -> int:
        return int(await self.redis.hlen(self.keys.held))

    @property
    def fresh_s(self) -> float:
        """A worker heard from within this long is alive (three heartbeats, at least 5 s)."""
        return max(3 * self.settings.heartbeat_s, 5.0)

    async def ready(self) -> bool:
        """Redis answers now, and what it holds now shows a worker's fresh heartbeat and a model served.
        The catalog is read live, not taken from the last refresh: after Redis lost its data (a restart
        without persistence) a stale catalog would say ready until the workers announce themselves again."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.refresh_catalog()
        except Exception:  # any failure to answer in time: not ready
            return False
        fresh = time.time() - self._workers_seen < self.fresh_s
        return fresh and any(e.ready for e in self.models.values())

    def alive(self) -> bool:
        """False once the engine of the worker embedded here has died (the process must be restarted; its
        jobs go to the other workers when their leases run out)."""
        return self.embedded is None or self.embedded.alive()

    async def close(self) -> None:
        if self.embedded is not None:
            await self.embedded.stop()
        await background.stop(self._tasks)
        self._tasks.clear()
        await self.redis.aclose()
