"""Webhook deliveries in Redis, shared by every API node: a sorted set of delivery IDs by due time and a
hash per delivery. UPDATE_RECORD adds them with the record change that fires them; any node's dispatcher
claims the due ones. A claim pushes the due time a lease ahead in one script, so two nodes never send the
same attempt, and a node that dies mid-delivery (or restarts) leaves it due again for any other."""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from app.queue.outbox import Delivery
from app.queue.redis.keys import Keys

log = logging.getLogger(__name__)

# KEYS: the outbox. ARGV: now, now + lease, most to claim. Returns the claimed delivery IDs.
CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


# Record a failed attempt and when the next one is due, keeping the delivery at least ``ttl`` seconds more:
# the process that wrote it (a worker, by its own settings) may not know the retry schedule of the API nodes,
# which send it. A delivery gone meanwhile (expired, or finished by another node) is taken off the outbox,
# not written again as a hash of its attempts alone. KEYS: the delivery, the outbox. ARGV: attempts, due
# time, ttl, delivery ID. Returns 1, or 0 when it was gone.
RETRY = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[4])
  return 0
end
redis.call('HSET', KEYS[1], 'attempts', ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
"""

FIELDS = ("url", "event", "record", "attempts")


class RedisOutbox:
    def __init__(self, redis: Redis, keys: Keys, delivery_ttl_s: int) -> None:
        """``delivery_ttl_s``: how long a delivery must be kept for this node's retry schedule
        (``Settings.webhook_delivery_ttl_s``), renewed at each retry."""
        self.redis, self.keys, self.delivery_ttl_s = redis, keys, delivery_ttl_s
        self._claim = redis.register_script(CLAIM)
        self._retry = redis.register_script(RETRY)

    async def claim(self, *, lease_s: float, limit: int) -> list[Delivery]:
        now = await self._now()
        ids = [i.decode() for i in await self._claim(keys=[self.keys.outbox], args=[now, now + lease_s, limit])]
        async with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(self.keys.delivery(delivery_id))
            rows = await pipe.execute()
        claimed = []
        for delivery_id, row in zip(ids, rows):
            fields = {k.decode(): v.decode() for k, v in row.items()}
            if not all(name in fields for name in FIELDS):  # expired unsent, or left half-written
                log.warning("webhook %s given up: its delivery is gone from Redis (expired unsent?)", delivery_id)
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(self.keys.outbox, delivery_id).delete(self.keys.delivery(delivery_id))
                    await pipe.execute()
                continue
            claimed.append(
                Delivery(delivery_id, fields["url"], fields["event"], fields["record"], int(fields["attempts"]))
            )
        return claimed

    async def _now(self) -> float:
        seconds, micros = await self.redis.time()  # one clock for every node
        return seconds + micros / 1e6

    async def finish(self, delivery: Delivery) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.outbox, delivery.id)
            pipe.delete(self.keys.delivery(delivery.id))
            await pipe.execute()

    async def retry(self, delivery: Delivery, delay_s: float) -> None:
        due = await self._now() + delay_s
        keys = [self.keys.delivery(delivery.id), self.keys.outbox]
        await self._retry(keys=keys, args=[delivery.attempts, due, self.delivery_ttl_s, delivery.id])
