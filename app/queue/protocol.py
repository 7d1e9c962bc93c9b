"""What the HTTP layer needs from a job queue. The in-memory and Redis backends both implement it;
routes depend on this protocol only, so they never see torch or a worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from app.jobs import JobRecord, JobSpec, Webhook
from app.queue.outbox import Outbox
from app.store.catalog import ModelEntry


class QueueFull(Exception):
    """Too many jobs queued or running; the client should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("the job queue is full")
        self.retry_after = retry_after


class TooManyJobs(Exception):
    """The key already has its ``max_concurrent_jobs`` queued or running."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("too many jobs for this key")
        self.retry_after = retry_after


class IdempotencyConflict(Exception):
    """An Idempotency-Key already used for a request with a different body."""


class QueueUnavailable(Exception):
    """The queue backend cannot be reached (Redis down or too slow); the client should retry."""

    type = "queue_unavailable"
    public = "the job queue is unreachable"  # what a client is told; the detail is for the log

    def __init__(self, detail: str, retry_after: int = 2) -> None:
        super().__init__(f"{self.public}: {detail}")
        self.retry_after = retry_after


class EngineStopped(QueueUnavailable):
    """This process's engine thread has died (a bug; its error is in the log) or is stuck in one turn past
    ``engine_stuck_s``: it runs no more jobs, and the process must be restarted. Its liveness probe
    (``/healthz``) says so."""

    type = "engine_stopped"
    public = "this server's engine has stopped or is stuck (the server's log says why)"

    def __init__(self) -> None:
        Exception.__init__(self, self.public)
        self.retry_after = 30


def stuck_for(engine, settings) -> float | None:
    """How long ``engine`` has been in one turn, where that is past ``engine_stuck_s`` (a hung device, a
    deadlock: its thread lives but runs nothing); None while it moves. The in-process queue and the Redis
    worker judge their engine by this."""
    busy = engine.busy_s()
    return busy if busy > settings.engine_stuck_s else None


class QueueUnreachable(RuntimeError):
    """Redis did not answer within ``queue_wait_s`` of the start: the node or worker does not start."""


class NoModels(RuntimeError):
    """The store holds no model that can be served, or not one the settings name."""


@dataclass(frozen=True)
class Admission:
    """On what terms a job is submitted: its Idempotency-Key and the request's fingerprint, the API key's
    name that will own it with that key's cap on jobs queued or running, and where its events go."""

    idempotency_key: str | None = None
    fingerprint: str = ""
    owner: str | None = None
    max_jobs: int | None = None
    webhook: Webhook | None = None

    @property
    def scoped_key(self) -> str | None:
        """The Idempotency-Key in its owner's own namespace (None without one)."""
        return f"{self.owner or ''}:{self.idempotency_key}" if self.idempotency_key else None


class JobQueue(Protocol):
    """Every method may raise QueueUnavailable when the backend cannot be reached."""

    models: dict[str, ModelEntry]
    outbox: Outbox  # webhook deliveries, filled as records change
    durable: bool  # jobs outlive this process (Redis): a waiter cut short by a stop can come back for them

    async def submit(
        self,
        spec: JobSpec,
        admission: Admission = Admission(),
    ) -> JobRecord:
        """Accept a job, or raise QueueFull (too many jobs, or too many image pixels, queued or running).
        An accepted job is never dropped. The same idempotency key returns the same job while it is kept;
        with another fingerprint (a different request body) it raises IdempotencyConflict. The owner may
        hold ``max_jobs`` queued or running (TooManyJobs beyond). The webhook's deliveries go through
        ``outbox``. The backend captures the running event loop here if it needs one."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job; a finished job is returned unchanged."""

    async def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """The record once finished, or as it stands when ``timeout`` seconds have passed."""

    def events(self, job_id: str) -> AsyncIterator[tuple[str, dict]]:
        """(event type, data) pairs for the job: its current state first, then changes, ending at a
        terminal status."""

    async def depth(self) -> int:
        """Jobs queued or running, as this node sees them (for the metrics)."""

    async def refresh_catalog(self) -> None:
        """Read ``models`` again now, where they come from elsewhere (Redis: the workers' announcements)."""

    async def reload_store(self) -> None:
        """Scan the model store again and serve what it holds now (SIGHUP): models added are served, those
        removed no longer, and one changed runs its new files once its running jobs are done. Nothing where
        this process runs no engine (an API node whose workers are elsewhere: signal them)."""

    async def ready(self) -> bool:
        """Models loaded, a worker alive, and the backend reachable now."""

    def alive(self) -> bool:
        """False once an engine thread in this process has died or is stuck: the process must be restarted."""

    async def close(self) -> None: ...
