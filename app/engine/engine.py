"""The engine: one thread that owns the loaded models, the scheduler and the runner.

Everything reaches it through one inbox (``Submit``, ``Cancel``, ``Stop``), so its state has a single
owner and needs no locks. Each loop: drain the inbox, ``schedule()`` a batch, ``runner.step()`` it,
``update()`` the scheduler with the rows that finished and the pass's time, hand finished rows to their
plans, and hand the pass's events (progress, finished jobs) to ``publish`` in one call. The event loop
never runs torch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from app.engine.allocator import keep_freed_memory
from app.engine.device import pick_device, pick_dtype
from app.engine.plans import Plan, Unencoded, denoise_tile, plan_denoise, plan_generate, require_finite, run_noise
from app.engine.runner import Row, Runner
from app.engine.scheduler import Scheduler, Ticket
from app.jobs import (
    PRIORITY_LEVEL,
    DenoiseSpec,
    EngineEvent,
    GenerateSpec,
    JobResult,
    JobSpec,
    NoiseSpec,
    Progress,
    aged_level,
)
from app.settings import Settings
from app.engine.models import ModelPool, memory_budget
from app.metrics import PASS_ROWS, PASS_SECONDS, ROWS_RUNNING
from app.store.catalog import ModelEntry
from app.store.loader import LoadedModel, schedule_of

log = logging.getLogger(__name__)
Publish = Callable[[list[EngineEvent]], None]
ENCODE_ASIDE_PIXELS = 1 << 20  # a result larger than this is written on the encoder's thread, not the engine's


# -- the inbox: what other threads can ask of the engine ------------------------------------------------
@dataclass(frozen=True)
class Submit:
    job_id: str
    spec: JobSpec
    waiting_since: float | None = None  # when it began to wait for room in memory (engine thread only)


@dataclass(frozen=True)
class Cancel:
    job_id: str


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Reload:
    fresh: dict[str, ModelEntry]  # a new scan of the store
    done: Future  # answered with the models served from now on


Message = Submit | Cancel | Stop | Reload


@dataclass
class _Job:
    id: str
    spec: JobSpec
    plan: Plan
    pending: int  # rows not yet finished
    started: bool = False
    began: float = 0.0


class Engine:
    def __init__(self, settings: Settings, entries: dict[str, ModelEntry], publish: Publish) -> None:
        self.settings = settings
        self.entries = entries
        self.publish = publish
        self._events: list[EngineEvent] = []  # published once per loop turn: one wake-up of the event loop
        self.device = pick_device(settings.device)
        if settings.keep_freed_memory:  # the console scripts did so first, before any thread (allocator.py)
            keep_freed_memory()
        self.runner = Runner(self.device, pick_dtype(settings.dtype, self.device), row_groups=settings.cpu_row_groups)
        self.scheduler = Scheduler(settings.batch_cap(self.device.type), settings.batch_pixel_cap(self.device.type))
        self.pool = ModelPool(entries, self.device, memory_budget(self.device, settings.model_memory_gb))
        self._deferred: list[Submit] = []  # jobs whose model waits for room in memory
        # models a waiting job needs gone (or, changed in the store, drained of jobs on their old weights), each
        # with the highest priority level among the jobs waiting on it: new jobs for them at that level or below
        # queue behind
        self._draining: dict[str, int] = {}
        self._jobs_ended = False  # a job ended since the waiting jobs were last retried: a model may be idle
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: dict[str, _Job] = {}
        self._rows: dict[int, Row] = {}
        self._thread: threading.Thread | None = None
        self._alive = False
        # large results are written (PNG, JPEG, WebP: no torch) on a thread of their own, between passes' work
        self._encodes: queue.SimpleQueue = queue.SimpleQueue()
        self._encoder = threading.Thread(target=self._encode_aside, name="diffusion-encoder", daemon=True)
        self.passes = 0  # forward passes run; a figure for tests and benchmarks
        self._turn_began: float | None = None  # when the loop's current turn began work; None while it waits

    # -- called from other threads ---------------------------------------------------------------
    def start(self, timeout: float = 600.0) -> None:
        """Start the engine thread and wait until it has loaded the models.

        Loading happens on the engine thread too: torch work on a second thread (even a model load)
        gives each its own OpenMP pool, and the engine's forward passes then ran at half speed on
        2 CPU cores (measured: 26 against 52 rows/s at batch 1).
        """
        self._alive = True
        self._encoder.start()
        loaded = threading.Event()
        self._thread = threading.Thread(target=self._run_thread, args=(loaded,), name="diffusion-engine", daemon=True)
        self._thread.start()
        if not loaded.wait(timeout):
            raise RuntimeError("the engine did not finish loading models in time")
        if not self.alive:
            raise RuntimeError("the engine thread died while loading the models (its error is in the log above)")

    def submit(self, job_id: str, spec: JobSpec) -> None:
        self._inbox.put(Submit(job_id, spec))

    def cancel(self, job_id: str) -> None:
        self._inbox.put(Cancel(job_id))

    def reload(self, fresh: dict[str, ModelEntry]) -> Future:
        """Serve a new scan of the store (``ModelPool.reload``); the future answers with the models served
        from then on, once the engine thread has taken them (after the forward pass it is in, if any)."""
        done: Future = Future()
        self._inbox.put(Reload(fresh, done))
        return done

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine thread, then let the encoder write the results it was handed (each one's event is
        published: a finished job is not lost at a stop)."""
        deadline = time.monotonic() + timeout
        self._inbox.put(Stop())
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # still in a pass: it may hand the encoder more (a daemon: it goes on)
                return
        self._encodes.put(None)
        if self._encoder.is_alive():
            self._encoder.join(max(0.0, deadline - time.monotonic()))

    def _encode_aside(self) -> None:
        """The encoder's thread: write each large result handed to it and publish its job's final event."""
        while (handed := self._encodes.get()) is not None:
            job_id, unencoded, began = handed
            try:
                self.publish([self._written(job_id, unencoded, began)])
            except Exception:  # the queue's loop closed meanwhile (a stop): the thread goes on for the others
                log.error("job %s: its end could not be published:\n%s", job_id, traceback.format_exc())

    @staticmethod
    def _written(job_id: str, result: JobResult | Unencoded, began: float) -> EngineEvent:
        """A finished job's final event: its result written (succeeded), or why it could not be (failed)."""
        try:
            if isinstance(result, Unencoded):
                result = result.encode()
        except Exception as exc:
            log.error("job %s failed while writing its result: %s", job_id, exc)
            return EngineEvent(job_id=job_id, type="failed", error=f"{type(exc).__name__}: {exc}")
        result.run_ms = round((time.time() - began) * 1000, 2)
        return EngineEvent(job_id=job_id, type="succeeded", result=result)

    def _succeed(self, job_id: str, result: JobResult | Unencoded, began: float) -> None:
        """A job's result: a large one is handed to the encoder's thread (after this turn's events so far, so
        its "started" comes first), a small one is written here."""
        if isinstance(result, Unencoded) and result.area > ENCODE_ASIDE_PIXELS and self._encoder.is_alive():
            self._flush()
            self._encodes.put((job_id, result, began))
            return
        self._emit(self._written(job_id, result, began))

    @property
    def alive(self) -> bool:
        return self._alive and self._thread is not None and self._thread.is_alive()

    def busy_s(self) -> float:
        """How long the loop has been in its current turn (0 while it waits for work): a turn is one forward
        pass and the arrivals before it, so one far longer than any pass means the engine is stuck (a hung
        device, a deadlock) though its thread lives."""
        began = self._turn_began
        return 0.0 if began is None else max(0.0, time.monotonic() - began)

    # -- the loop (engine thread only) ------------------------------------------------------------
    @property
    def models(self) -> dict[str, LoadedModel]:
        """The models in memory now."""
        return self.pool.loaded

    def _load(self) -> None:
        """Refuse models larger than the memory budget, then load DIFFUSION_PRELOAD's (default: every served
        model, in store order, while they fit); a model that fails is marked with its reason, not served."""
        self.pool.refuse_oversized()
        self._preload()

    def _preload(self) -> None:
        """Load DIFFUSION_PRELOAD's models (default: every served one, in store order, while they fit) that
        are not in memory: at start, after a reload of the store (added or changed models), and when a
        changed model's last job on its old weights has ended, so its first job after does not wait for it.

        Not while jobs wait for room in memory: what they wait for comes first, and a model loaded ahead of
        it would only be unloaded again to make that room. Each load is timed as one turn, as a load on first
        use is: several in a row are not one turn that looks stuck."""
        if self._waiting_for_room():
            return
        names = self.settings.preload_names or [name for name, entry in self.entries.items() if entry.ready]
        busy = self._busy_models()
        for name in names:
            if name in self.pool.loaded:
                continue
            if self._turn_began is not None:  # in the loop (at start, before it, nothing is timed)
                self._turn_began = time.monotonic()
            self.pool.preload([name], busy=busy)

    def _model_for(self, job_id: str, spec: JobSpec, waiting_since: float | None) -> LoadedModel | None:
        """The job's model, in memory; None (the job waits) while every model that would make room is busy.

        A waiting job's turn must come: new jobs of its priority or lower for the models it waits on (busy, or
        idle but in the way) queue behind it, so those models drain and go idle (else a steady stream for a
        loaded model would keep another out forever), and so do such jobs for a model not in memory, whose
        load would take the room it waits for (else a stream cycling through other models would unload what
        it counted on, pass after pass). A job of higher priority is not held behind it; priorities age while
        jobs wait, as in the scheduler."""
        now = time.monotonic()
        since = now if waiting_since is None else waiting_since
        level = self._level(spec, now - since)
        held = self._draining.get(spec.model, -1) >= level
        if not held and spec.model not in self.pool.loaded and (waiting := self._waiting_for_room()):
            held = max(self._level(m.spec, now - m.waiting_since) for m in waiting) >= level
        busy = self._busy_models()
        model = None if held else self.pool.get(spec.model, busy=busy)
        if model is None:
            log.debug("job %s waits for room in memory for model %s", job_id, spec.model)
            if not held:
                for name in self.pool.in_the_way(spec.model, busy=busy):
                    self._draining[name] = max(self._draining.get(name, -1), level)
            self._deferred.append(Submit(job_id, spec, since))
        return model

    def _waiting_for_room(self) -> list[Submit]:
        """The waiting jobs that wait for room in memory: not those whose model's folder changed, which wait
        for the jobs on its old weights to end, whatever the room."""
        return [m for m in self._deferred if m.spec.model not in self.pool.stale]

    def _level(self, spec: JobSpec, waited_s: float) -> int:
        """A job's priority level, a level higher per ``aging_s`` it has waited for room (as the scheduler's
        rows age), so a low job's turn comes under a stream of higher ones for the models in its way."""
        return aged_level(PRIORITY_LEVEL[spec.priority], waited_s, self.scheduler.aging_s)

    def _retry_deferred(self) -> None:
        """Retry the waiting jobs once a job has ended (a model may be idle): by priority, then in the order
        they came, each saying again which models must drain for it."""
        deferred, self._deferred, self._draining, self._jobs_ended = self._deferred, [], {}, False
        now = time.monotonic()
        for message in sorted(deferred, key=lambda m: -self._level(m.spec, now - m.waiting_since)):
            self._accept(message.job_id, message.spec, message.waiting_since)

    def _run_thread(self, loaded: threading.Event) -> None:
        try:
            try:
                self.runner.groups.start()  # before any other torch work in the process (RowGroups.start)
                self._load()
            except Exception:  # a bug: each model's own failure is caught and marked on it
                log.critical("loading the models failed:\n%s", traceback.format_exc())
                self._alive = False
                return
            finally:
                loaded.set()
            self._loop()
        finally:
            self.runner.groups.close()  # the engine's thread ends: its row groups' threads with it

    def _emit(self, event: EngineEvent) -> None:
        self._events.append(event)

    def _flush(self) -> None:
        if self._events:
            events, self._events = self._events, []
            self.publish(events)

    def _loop(self) -> None:
        try:
            while True:
                if self._jobs_ended and self.pool.stale:  # a changed model's last job may have ended
                    if self.pool.drop_stale(busy=self._busy_models()):
                        self._preload()  # its new files
                if self._deferred and self._jobs_ended:  # a model may be idle now, making room
                    self._retry_deferred()
                block = self.scheduler.idle
                if block:
                    self._turn_began = None  # waiting for work is not being stuck (_drain starts the clock)
                    self._flush()  # a waiting job's retry above may have failed it: say so before sleeping
                running = self._drain(block=block)
                self._flush()
                if not running:
                    return
                batch, admitted = self.scheduler.schedule()
                self._admit(admitted)
                self._flush()  # "started" now, not after a first pass that may take minutes
                batch = [t for t in batch if t.row_id in self._rows]  # less the rows of jobs that failed
                if batch:
                    self._run(batch)
                self._flush()
                self._turn_began = time.monotonic()  # the next turn's work begins
        except Exception:  # a bug in the loop itself: say so loudly; readiness turns false
            log.critical("engine loop died:\n%s", traceback.format_exc())
        finally:
            self._alive = False

    def _drain(self, *, block: bool) -> bool:
        """Take every message waiting; submissions are accepted together (their prompts encoded in one
        batch per model), in order with the cancels between them."""
        arrivals: list[Submit] = []
        try:
            while True:
                try:
                    message: Message = self._inbox.get(block=block)
                except queue.Empty:
                    return True
                if self._turn_began is None:  # woken: this turn's work (a first-use model load too) starts now
                    self._turn_began = time.monotonic()
                block = False
                if isinstance(message, Submit):
                    arrivals.append(message)
                    continue
                self._accept_all(arrivals)
                arrivals = []
                if isinstance(message, Stop):
                    return False
                if isinstance(message, Reload):
                    self._reload(message)
                    continue
                self._cancel(message.job_id)
        finally:
            self._accept_all(arrivals)

    def _busy_models(self) -> set[str]:
        return {job.spec.model for job in self._jobs.values() if job.spec.model}

    def _reload(self, message: Reload) -> None:
        if not message.done.set_running_or_notify_cancel():
            return  # the caller gave up waiting (it is stopping): nothing changes
        try:
            self.entries = self.pool.reload(message.fresh, busy=self._busy_models())
        except Exception as exc:  # a bug: the models served stay as they were, and the caller hears why
            log.error("reloading the model store failed:\n%s", traceback.format_exc())
            message.done.set_exception(exc)
            return
        self._replan_unstarted()
        try:
            self._preload()  # before the answer: a model that fails to load is refused from then on, with why
        except Exception:  # a bug (a model's own failure is marked on it): they load on first use instead
            log.error("loading the models after a reload failed:\n%s", traceback.format_exc())
        self._jobs_ended = True  # waiting jobs are retried: their model may have come, gone or changed
        message.done.set_result(self.entries)

    def _replan_unstarted(self) -> None:
        """After a reload, the jobs accepted but not started (no row admitted yet) whose rows were planned on
        a model that left the store fail as not served; those planned on weights whose folder changed are
        planned again on the new files (they may wait for the old weights' running jobs to end)."""
        for job in [j for j in self._jobs.values() if not j.started and j.plan.rows]:
            entry = self.entries.get(job.spec.model)
            if entry is not None and entry.ready and job.plan.rows[0].model.entry is entry:
                continue  # planned on the weights served now
            since = self.scheduler.waiting_since(job.id)  # its age goes with it (its place among equals does not)
            self._drop(job.id)
            self._accept(job.id, job.spec, since)  # fails it as not served, or plans it on what is served now
        self.pool.drop_stale(busy=self._busy_models())  # a changed model only unstarted jobs held

    def _accept_all(self, arrivals: list[Submit]) -> None:
        by_model: dict[str, list] = {}
        for message in arrivals:
            if isinstance(message.spec, GenerateSpec) and message.spec.model in self.models:
                by_model.setdefault(message.spec.model, []).append(message.spec)
        for name, specs in by_model.items():
            try:
                self.models[name].prepare(specs)
            except Exception as exc:  # each job then prepares its own, and fails alone if it must
                log.warning("preparing %d jobs of model %s together failed: %s", len(specs), name, exc)
        for message in arrivals:
            self._accept(message.job_id, message.spec)

    def _accept(self, job_id: str, spec: JobSpec, waiting_since: float | None = None) -> None:
        try:
            if isinstance(spec, NoiseSpec):  # a timestep needs the model's schedule, not its weights
                schedule = schedule_of(self.entries[spec.model]) if spec.model else None
                began = time.time()
                self._emit(EngineEvent(job_id=job_id, type="started"))
                self._succeed(job_id, run_noise(spec, schedule), began)
                return
            if spec.model not in self.entries or not self.entries[spec.model].ready:
                raise ValueError(f"model {spec.model!r} is not served by this worker")
            model = self._model_for(job_id, spec, waiting_since)
            if model is None:
                return
            if isinstance(spec, GenerateSpec):
                refused = model.entry.label_refusal(spec.class_label)
                if refused is not None:  # checked by the API against the model as it was then
                    raise ValueError(f"{refused[1]} (model {spec.model!r} changed since the job was accepted)")
                plan = plan_generate(job_id, spec, model)
            elif isinstance(spec, DenoiseSpec):
                tile = denoise_tile(self.settings, self.runner)
                plan = plan_denoise(job_id, spec, model, tile=tile, overlap=self.settings.denoise_overlap)
            else:
                raise ValueError(f"unknown job kind {spec.kind!r}")
        except Exception as exc:
            log.warning("job %s failed before running: %s", job_id, exc)
            self._emit(EngineEvent(job_id=job_id, type="failed", error=f"{type(exc).__name__}: {exc}"))
            return
        self._jobs[job_id] = _Job(id=job_id, spec=spec, plan=plan, pending=len(plan.rows))
        for row in plan.rows:
            self._rows[row.id] = row
        level = PRIORITY_LEVEL[spec.priority]
        # a job that waited for room in memory has waited with no row admitted: its rows age from then on
        tickets = [Ticket(r.id, job_id, r.group, r.network_rows, r.pixels, level) for r in plan.rows]
        self.scheduler.add(tickets, since=waiting_since)

    def _drop(self, job_id: str) -> None:
        """Forget a job and free its rows' tensors and its plan's canvases at once."""
        for row_id in self.scheduler.cancel(job_id):
            row = self._rows.pop(row_id, None)
            if row is not None:
                row.release()
        self._jobs.pop(job_id, None)
        self._jobs_ended = True
        ROWS_RUNNING.set(self.scheduler.running_cost)  # no pass may follow to set it: the last job may be gone

    def _cancel(self, job_id: str) -> None:
        waiting = [m for m in self._deferred if m.job_id == job_id]
        if waiting:
            self._deferred = [m for m in self._deferred if m.job_id != job_id]
            if self._deferred:  # retried at the next turn: they say again which busy models must drain
                self._jobs_ended = True
            else:  # nothing waits: no model need drain
                self._draining = {}
            self._emit(EngineEvent(job_id=job_id, type="canceled"))
            return
        if job_id not in self._jobs:
            return
        self._drop(job_id)
        self._emit(EngineEvent(job_id=job_id, type="canceled"))

    def _admit(self, admitted: list[Ticket]) -> None:
        """Rows that joined the running set build their tensors now; their jobs have started."""
        for ticket in admitted:
            row = self._rows.get(ticket.row_id)
            if row is None:
                continue  # its job failed on an earlier row of this admission
            try:
                row.begin(self.device)
            except Exception as exc:  # e.g. out of device memory: this job fails, the engine goes on
                log.error("job %s failed while admitting a row: %s", ticket.job_id, exc)
                self._fail(ticket.job_id, f"{type(exc).__name__}: {exc}")
        for job_id in dict.fromkeys(t.job_id for t in admitted if t.row_id in self._rows):
            job = self._jobs.get(job_id)
            if job and not job.started:
                job.started, job.began = True, time.time()
                self._emit(
                    EngineEvent(job_id=job_id, type="started", progress=Progress(step=0, total=job.spec.total_steps))
                )

    def _run(self, batch: list[Ticket]) -> None:
        rows = [self._rows[t.row_id] for t in batch]
        began = time.perf_counter()
        try:
            finished = self.runner.step(rows)
        except Exception as exc:
            finished = self._isolate_failure(rows, exc)
        self.passes += 1
        seconds = time.perf_counter() - began
        self.scheduler.update([r.id for r in finished], seconds=seconds)
        PASS_ROWS.observe(len(rows))
        PASS_SECONDS.observe(seconds)
        ROWS_RUNNING.set(self.scheduler.running_cost)
        for row in finished:
            self._collect(row)
        for job_id in dict.fromkeys(r.job_id for r in rows):
            if job_id in self._jobs:
                self._report(self._jobs[job_id])

    def _collect(self, row: Row) -> None:
        """Hand a finished row's output to its plan and free the row."""
        job = self._jobs.get(row.job_id)
        self._rows.pop(row.id, None)
        if job is None:
            return
        try:
            require_finite(row.x)  # else it would be encoded as a black image, "succeeded"
            job.plan.collect(row)
        except Exception as exc:
            log.error("job %s failed while collecting a row: %s", job.id, exc)
            self._fail(job.id, f"{type(exc).__name__}: {exc}")
        else:
            job.pending -= 1
        finally:
            row.release()

    def _isolate_failure(self, rows: list[Row], exc: Exception) -> list[Row]:
        """A batch raised: retry it job by job so only the job at fault fails."""
        log.warning("batch of %d rows failed (%s); retrying job by job", len(rows), exc)
        finished: list[Row] = []
        by_job: dict[str, list[Row]] = {}
        for row in rows:
            by_job.setdefault(row.job_id, []).append(row)
        for job_id, job_rows in by_job.items():
            try:
                finished += self.runner.step(job_rows)
            except Exception as job_exc:
                log.error("job %s failed: %s", job_id, job_exc)
                self._fail(job_id, f"{type(job_exc).__name__}: {job_exc}")
        return finished

    def _preview(self, job: _Job, progress: Progress) -> None:
        """The previews the job's rows kept in this pass, if it asked for them (a failed one is skipped)."""
        if job.plan.preview is None:
            return
        due = [r for r in job.plan.rows if r.preview is not None]
        images = []
        for row in due:
            try:
                images.append(job.plan.preview(row))
            except Exception as exc:
                log.warning("job %s: preview failed (%s)", job.id, exc)
            row.preview = None
        if images:
            self._emit(EngineEvent(job_id=job.id, type="preview", progress=progress, preview=images))

    def _fail(self, job_id: str, error: str) -> None:
        self._drop(job_id)
        self._emit(EngineEvent(job_id=job_id, type="failed", error=error))

    def _report(self, job: _Job) -> None:
        rows = job.plan.rows
        progress = Progress(step=min(r.index for r in rows), total=job.spec.total_steps)
        self._emit(EngineEvent(job_id=job.id, type="progress", progress=progress))
        if job.pending:
            self._preview(job, progress)
            return
        del self._jobs[job.id]
        self._jobs_ended = True
        try:
            result = job.plan.finish()
        except Exception as exc:
            log.error("job %s failed while assembling its result: %s", job.id, exc)
            self._emit(EngineEvent(job_id=job.id, type="failed", error=f"{type(exc).__name__}: {exc}"))
            return
        self._succeed(job.id, result, job.began)
