"""The body guard on its own (ASGI level, a fake client): each piece of a body within the timeout, the whole
body within TOTAL_TIMEOUTS of them, and nothing past the body is limited."""

from __future__ import annotations

import asyncio

import pytest
from starlette.exceptions import HTTPException

from app.api.limits import TOTAL_TIMEOUTS, BodyLimit


async def _read_all(scope, receive, send):
    while (await receive()).get("more_body"):
        pass


def _run(every_s: float, timeout_s: float) -> None:
    async def receive():
        await asyncio.sleep(every_s)
        return {"type": "http.request", "body": b"x", "more_body": True}

    guard = BodyLimit(_read_all, max_bytes=10**9, timeout_s=timeout_s)
    asyncio.run(guard({"type": "http", "headers": []}, receive, None))


def test_a_trickle_that_keeps_each_piece_in_time_is_still_cut_off_in_all():
    with pytest.raises(HTTPException) as caught:
        _run(every_s=0.01, timeout_s=0.05)  # each byte in time, for ever
    assert caught.value.status_code == 408
    assert f"took more than {TOTAL_TIMEOUTS * 0.05:g} s in all" in caught.value.detail


def test_a_piece_later_than_the_timeout_is_a_408():
    with pytest.raises(HTTPException) as caught:
        _run(every_s=0.2, timeout_s=0.05)
    assert caught.value.status_code == 408 and "did not arrive within 0.05 s" in caught.value.detail
