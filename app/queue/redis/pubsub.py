"""Messages of a Redis Pub/Sub channel, for the background duties that follow one (engine events on API
nodes, cancels on workers)."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from redis.asyncio import Redis


async def messages(redis: Redis, channel: str) -> AsyncIterator[bytes]:
    """The data of each message published on ``channel`` while the loop runs; the subscription is closed
    when it ends (an error, a cancel, or the loop left)."""
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(channel)
        async for message in pubsub.listen():
            if message["type"] == "message":
                yield message["data"]
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()
