"""Background duties: an error is retried, a cancel always ends a loop (even one a library turned into an
error, or one that was lost), and stopping gives up on a task that will not end instead of hanging."""

from __future__ import annotations

import asyncio
import logging

from app import background


async def ignores_cancels(release: asyncio.Event) -> None:
    """A task no cancel stops (a library that waits on a socket it will not give up): only ``release`` ends it."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


def test_forever_retries_a_step_that_failed():
    calls = []

    async def step():
        calls.append(len(calls))
        if len(calls) == 1:
            raise ConnectionError("away for a moment")
        if len(calls) == 3:
            await asyncio.sleep(3600)

    async def main():
        task = background.forever(step, pause_s=0.01)
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        assert await background.stop([task]) == set()
        return task

    task = asyncio.run(main())
    assert calls == [0, 1, 2] and task.cancelled()


def test_a_cancel_that_a_library_turns_into_an_error_still_ends_the_loop():
    """redis-py and Python 3.11's wait_for can surface a cancel as an error: the loop must not retry it."""
    calls = []

    async def step():
        calls.append(1)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("Connection closed by server") from None

    async def main():
        task = background.forever(step, pause_s=0.01)
        await asyncio.sleep(0.05)
        left = await background.stop([task], timeout_s=30)
        return task, left

    task, left = asyncio.run(main())
    assert left == set() and task.cancelled() and len(calls) == 1


def test_a_lost_cancel_is_sent_again():
    async def swallows_the_first_cancel():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # lost, as wait_for loses one on 3.11
        await asyncio.sleep(3600)

    async def main():
        task = asyncio.create_task(swallows_the_first_cancel())
        await asyncio.sleep(0.01)
        left = await background.stop([task], timeout_s=30, every_s=0.05)
        return task, left

    task, left = asyncio.run(main())
    assert left == set() and task.cancelled()


def test_a_task_that_will_not_stop_is_left_and_named_with_where_it_waits(caplog):
    async def main():
        release = asyncio.Event()
        task = asyncio.create_task(ignores_cancels(release), name="stubborn-duty")
        await asyncio.sleep(0.01)
        left = await background.stop([task], timeout_s=0.2, every_s=0.05)
        running = not task.done()
        release.set()
        await task
        return task, left, running

    with caplog.at_level(logging.ERROR, logger="app.background"):
        task, left, running = asyncio.run(main())
    assert left == {task} and running
    (record,) = [r for r in caplog.records if "did not stop" in r.getMessage()]
    assert "stubborn-duty" in record.getMessage() and "in ignores_cancels" in record.getMessage()


def test_a_task_that_already_failed_is_stopped_without_raising():
    async def fails():
        raise RuntimeError("boom")

    async def main():
        task = asyncio.create_task(fails())
        await asyncio.sleep(0.01)
        return await background.stop([task]), task

    left, task = asyncio.run(main())
    assert left == set() and isinstance(task.exception(), RuntimeError)


def test_a_step_that_never_ends_is_left_behind_with_every_task_named(caplog):
    async def main():
        release = asyncio.Event()
        other = asyncio.create_task(asyncio.sleep(3600), name="a-neighbour")
        finished = await background.within(ignores_cancels(release), 0.2, "closing the test queue")
        assert await background.within(asyncio.sleep(0), 5, "a quick step")
        release.set()  # let the test's loop end
        other.cancel()
        return finished

    with caplog.at_level(logging.ERROR, logger="app.background"):
        finished = asyncio.run(main())
    assert finished is False
    (record,) = [r for r in caplog.records if "did not end" in r.getMessage()]
    assert "closing the test queue" in record.getMessage() and "a-neighbour" in record.getMessage()
    assert "ignores_cancels" in record.getMessage()


def test_a_node_whose_queue_never_finishes_closing_still_shuts_down(tmp_path, monkeypatch, caplog):
    """The API's lifespan bounds its queue's close (grace + margin) and says where the tasks wait."""
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from tests.helpers import make_settings

    class HangingQueue:
        outbox = None
        closes = 0

        def alive(self):
            return True

        async def reload_store(self):
            pass

        async def close(self):
            HangingQueue.closes += 1
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # lost, as a library may lose one
            await asyncio.sleep(3600)

    monkeypatch.setattr(background, "CLOSE_MARGIN_S", 0.3)
    app = create_app(make_settings(tmp_path, shutdown_grace_s=0), queue=HangingQueue())
    with caplog.at_level(logging.ERROR, logger="app.background"):
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
    assert HangingQueue.closes == 1
    (record,) = [r for r in caplog.records if "did not end" in r.getMessage()]
    assert "closing the job queue" in record.getMessage() and "in close" in record.getMessage()


def test_a_sighup_during_a_reload_runs_it_once_more_after_and_a_failed_one_is_logged(caplog):
    import os
    import signal

    runs: list[int] = []
    release = asyncio.Event()

    async def reload() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            await release.wait()
        if len(runs) == 2:
            raise RuntimeError("the store is unreadable")

    async def scenario() -> list[int]:
        remove = background.on_sighup(reload)
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.2)
        os.kill(os.getpid(), signal.SIGHUP)  # during the first run: once more after it, not at once
        os.kill(os.getpid(), signal.SIGHUP)  # (asked twice meanwhile: still once)
        await asyncio.sleep(0.2)
        assert runs == [0]
        release.set()
        await asyncio.sleep(0.2)
        assert runs == [0, 1]  # the second failed: logged, and the handler still works
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.2)
        remove()
        return runs

    with caplog.at_level(logging.ERROR, logger="app.background"):
        assert asyncio.run(scenario()) == [0, 1, 2]
    assert "reloading the model store failed" in caplog.text and "the store is unreadable" in caplog.text


def test_a_sighup_before_the_handler_is_logged_not_the_end_and_removing_the_handler_restores_it(caplog):
    import os
    import signal

    before = signal.getsignal(signal.SIGHUP)
    try:
        background.hold_sighup()
        held = signal.getsignal(signal.SIGHUP)
        with caplog.at_level(logging.WARNING, logger="app.background"):
            os.kill(os.getpid(), signal.SIGHUP)  # still starting: logged, the process goes on

        async def scenario():
            remove = background.on_sighup(lambda: asyncio.sleep(0))
            remove()

        asyncio.run(scenario())
        assert signal.getsignal(signal.SIGHUP) is held  # not SIGHUP's default, which would end the process
        assert "SIGHUP while starting" in caplog.text
    finally:
        signal.signal(signal.SIGHUP, before)
