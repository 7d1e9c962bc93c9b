"""Webhook deliveries in Redis, shared by every API node: a sorted set of delivery IDs by due time and a
hash per delivery. UPDATE_RECORD adds them with the record change that fires them; any node's dispatcher
claims the due ones. A claim pushes the due time a lease ahead in one script, so two nodes never send the
same attempt, and a node that dies mid-delivery (or restarts) leaves it due again for any other."""

from __future__ import annotations

from redis.asyncio import Redis

from app.queue.outbox import Delivery
from app.queue.redis.keys import Keys

# KEYS: the outbox. ARGV: now, now + lease, most to claim. Returns the claimed delivery IDs.
CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


class RedisOutbox:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self._claim = redis.register_script(CLAIM)

    async def claim(self, *, lease_s: float, limit: int) -> list[Delivery]:
        now = await self._now()
        ids = [i.decode() for i in await self._claim(keys=[self.keys.outbox], args=[now, now + lease_s, limit])]
        async with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in ids:
                pipe.hgetall(self.keys.delivery(delivery_id))
            rows = await pipe.execute()
        claimed = []
        for delivery_id, row in zip(ids, rows):
            if not row:  # expired: nothing left to send
                await self.redis.zrem(self.keys.outbox, delivery_id)
                continue
            fields = {k.decode(): v.decode() for k, v in row.items()}
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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.delivery(delivery.id), "attempts", delivery.attempts)
            pipe.zadd(self.keys.outbox, {delivery.id: due})
            await pipe.execute()
