"""Background duties of a process (Redis intake, lease renewal, event subscriptions, webhook sending): run
them so an error never silently ends one, and stop them so a shutdown always ends.

A cancel can be lost on the way: Python 3.11's ``asyncio.wait_for`` swallows one that lands as its inner
call finishes, and a client library may turn one into its own error. A loop that catches errors to retry
would then run on after ``cancel()``, and a shutdown that awaits it would wait forever. So the loops here
end on an error raised while a cancel is pending, and ``stop`` cancels again until each task is done, and
gives up on (and logs the stack of) a task that still runs after its time.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import Future

log = logging.getLogger(__name__)
# How long a stop may take past its grace (handing jobs back, writing the last events, stopping the engine)
# before the process goes on without it.
CLOSE_MARGIN_S = 30.0


def cancel_pending() -> bool:
    """Whether the running task has been asked to cancel (even if the CancelledError was swallowed)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def forever(step: Callable[[], Awaitable[None]], *, pause_s: float = 0.5, name: str | None = None) -> asyncio.Task:
    """Run ``step`` again and again as a task; an error (Redis away for a moment) is logged and retried after
    ``pause_s``, so no duty silently stops. A cancel ends it, even one that surfaced as an error."""

    name = name or step.__name__

    async def loop() -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if cancel_pending():
                    raise asyncio.CancelledError from exc
                log.warning("%s failed (%s: %s); retrying", name, type(exc).__name__, exc)
                await asyncio.sleep(pause_s)

    return asyncio.create_task(loop(), name=name)


def stacks(tasks: Collection[asyncio.Task]) -> str:
    """Where each task waits: its name, then its stack."""
    where = io.StringIO()
    for task in tasks:
        where.write(f"-- {task.get_name()}\n")
        task.print_stack(file=where)
    return where.getvalue()


async def stop(tasks: Collection[asyncio.Task], *, timeout_s: float = 5.0, every_s: float = 0.5) -> set[asyncio.Task]:
    """Cancel ``tasks`` and wait for them, cancelling again every ``every_s`` (a lost cancel is sent once
    more); after ``timeout_s`` give up on those still running, log where each one waits, and return them.
    Their results and errors are dropped: they are being stopped."""
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + timeout_s
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(every_s, left))
    if pending:
        log.error("%d task(s) did not stop within %.1f s; left running:\n%s", len(pending), timeout_s, stacks(pending))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
    return pending


async def within(awaitable: Awaitable[object], timeout_s: float, what: str) -> bool:
    """Await ``awaitable`` for at most ``timeout_s``: a shutdown step that never ends (a library waiting on a
    socket, a cancel lost) must not keep the process from exiting. On time out, log ``what`` and where every
    task of the loop waits, leave it cancelled, and return False."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if done:
        task.result()  # its error, if it failed, is the caller's
        return True
    others = [other for other in asyncio.all_tasks() if other is not asyncio.current_task()]
    log.error("%s did not end within %.0f s; going on without it. Tasks:\n%s", what, timeout_s, stacks(others))
    task.cancel()
    return False


class _Repeatable:
    """An action run as one task at a time: asked again while it runs, it runs once more after."""

    def __init__(self, action: Callable[[], Awaitable[None]], name: str) -> None:
        self.action, self.name = action, name
        self.task: asyncio.Task | None = None
        self.again = False

    def __call__(self) -> None:
        if self.task is not None:
            self.again = True
            return
        self.task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        try:
            while True:
                self.again = False
                try:
                    await self.action()
                except Exception:
                    log.exception("%s failed", self.name)
                if not self.again:
                    return
        finally:
            self.task = None


def on_sighup(action: Callable[[], Awaitable[None]], *, name: str = "reloading the model store") -> Callable[[], None]:
    """Run ``action`` on the running loop at each SIGHUP (one run at a time; a SIGHUP during a run runs it once
    more after). Returns what removes the handler. Where this thread cannot take signals (not the main
    thread: an app run by a test client), nothing is installed."""
    loop = asyncio.get_running_loop()
    try:
        before = signal.getsignal(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, _Repeatable(action, name))
    except (RuntimeError, ValueError, NotImplementedError):
        return lambda: None

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)  # (which leaves SIGHUP's default: ending the process)
        signal.signal(signal.SIGHUP, before)

    return remove


async def answer_while(future: Future, moving: Callable[[], bool], *, every_s: float = 1.0):
    """The result of ``future``, which another thread answers (the engine's, between two passes), waited for
    as long as ``moving()`` says that thread still lives and moves: a reload that loads many models takes
    longer than any one turn, and a dead or stuck engine never answers. Once it does not move, the future is
    canceled (if not yet taken, it never will be) and this raises."""
    waiting = asyncio.wrap_future(future)
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), every_s)
        except TimeoutError:
            if not moving():
                waiting.cancel()
                raise RuntimeError("the engine died or got stuck before it answered") from None


def exit_on_stop_while_starting() -> None:
    """Until the process installs its own SIGTERM and SIGINT handlers (the worker once its models are loaded,
    uvicorn once it serves), either signal ends it at once, with 0: nothing is held yet (Redis being reached,
    models loading). Without a handler, Python as a container's PID 1 (an exec-form command) ignored SIGTERM,
    since the kernel sends PID 1 only the signals it handles, so a pod stopped while it loaded ran on to the
    end of its load, took jobs, and was killed at the end of its termination grace holding them. The model
    loading thread is not waited for (``os._exit``)."""

    def stopped(signum, frame) -> None:
        log.warning("stopped by signal %d while starting: nothing was held", signum)
        logging.shutdown()
        os._exit(0)

    _handle((signal.SIGTERM, signal.SIGINT), stopped)


def hold_sighup() -> None:
    """Until ``on_sighup`` takes over, and again once its handler is removed at shutdown, a SIGHUP is logged and
    ignored, not the end of the process (its default): a process that is still loading its models, or already
    stopping, does not read the store again."""

    def early(signum, frame) -> None:
        log.warning("SIGHUP while starting: the model store is read again only once the service is up; send it then")

    _handle((signal.SIGHUP,), early)


def _handle(signals: tuple[signal.Signals, ...], handler: Callable) -> None:
    """Install a process-wide handler for these signals, from the main thread (elsewhere Python refuses it:
    a service run inside another program's thread, as in tests, keeps that program's handlers)."""
    for sig in signals:
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
