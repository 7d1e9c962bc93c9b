"""Drive the engine directly (no HTTP): submit specs, collect its events, wait for outcomes."""

from __future__ import annotations

import io
import threading
import time
from collections import defaultdict

import numpy as np
from PIL import Image

from app.engine.engine import Engine
from app.jobs import EngineEvent
from app.store.catalog import scan_store
from tests.helpers import make_settings

TERMINAL = {"succeeded", "failed", "canceled"}


class EngineHarness:
    def __init__(self, store, **overrides) -> None:
        self.events: dict[str, list[EngineEvent]] = defaultdict(list)
        self._cond = threading.Condition()
        self.engine = Engine(make_settings(store, **overrides), scan_store(store), self._emit)
        self.engine.start()

    def _emit(self, events: list[EngineEvent]) -> None:
        with self._cond:
            for event in events:
                self.events[event.job_id].append(event)
            self._cond.notify_all()

    def submit(self, job_id, spec):
        self.engine.submit(job_id, spec)

    def outcome(self, job_id, timeout=120.0) -> EngineEvent:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                done = [e for e in self.events[job_id] if e.type in TERMINAL]
                if done:
                    return done[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} did not finish")
                self._cond.wait(left)

    def wait_for_step(self, job_id, step, timeout=120.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(e.progress and e.progress.step >= step for e in self.events[job_id] if e.type == "progress"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} never reached step {step}")
                self._cond.wait(left)

    def hold_passes(self) -> tuple[threading.Event, threading.Event]:
        """From now on each forward pass waits, once inside, until ``release`` is set (30 s at most);
        ``inside`` is set when one is."""
        inside, release = threading.Event(), threading.Event()
        real = self.engine.runner.step

        def held(rows):
            inside.set()
            release.wait(30)
            return real(rows)

        self.engine.runner.step = held
        return inside, release

    def close(self) -> None:
        self.engine.stop()


def pixels(event) -> np.ndarray:
    """The first result image of a finished job's event, as int pixels."""
    return np.asarray(Image.open(io.BytesIO(event.result.images[0].data))).astype(int)
