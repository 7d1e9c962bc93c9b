"""How the API process serves: uvicorn with a time limit on request headers, and a graceful stop that tells
the app it is draining, so sync requests still waiting when the grace runs out get a proper answer, and
that ends the process with status 0 (uvicorn would re-raise SIGTERM and die by it)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Drain:
    """The app's view of a graceful stop: when it began, and how long waiters may still take."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.began: float | None = None
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._event = loop, asyncio.Event()

    def start(self) -> None:
        """Called from the signal handler (the loop's own thread, between two of its steps)."""
        if self.began is None:
            self.began = time.monotonic()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._event.set)

    async def deadline_passed(self) -> None:
        """Returns once a stop has begun and the waiters' share of the grace is over (a second before it
        ends, so that their answers go out before uvicorn cancels what is left)."""
        if self.began is None:
            if self._event is None:
                self.attach(asyncio.get_running_loop())
            await self._event.wait()
        left = self.grace_s - 1.0 - (time.monotonic() - self.began)
        if left > 0:
            await asyncio.sleep(left)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a limit on how long a client may take to send a request's headers (on a
    new connection, or a kept-alive one once it starts a request); past it the connection is closed."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # a new request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # its headers are in

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            log.info("closing a connection whose request headers took over %.0f s", self.header_timeout_s)
            self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server that tells ``drain`` when a stop begins and exits normally after it."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain.start()
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:  # the stop was graceful: no re-raised signal, the process exits with 0
            for sig, handler in original.items():
                signal.signal(sig, handler)


def protocol_with(header_timeout_s: float) -> type[TimedH11Protocol]:
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout_s": header_timeout_s})
