"""Reading and writing job records in Redis, shared by API nodes and workers."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from app.jobs import JobRecord, event_payload
from app.metrics import job_finished
from app.queue.redis.keys import GROUP, UPDATE_RECORD, Keys


class RecordStore:
    def __init__(self, redis: Redis, keys: Keys, retention_s: float, delivery_ttl_s: int) -> None:
        self.redis, self.keys, self.retention_s, self.delivery_ttl_s = redis, keys, retention_s, delivery_ttl_s
        self._update = redis.register_script(UPDATE_RECORD)

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self.redis.hget(self.keys.job(job_id), "record")
        return None if raw is None else JobRecord.model_validate_json(raw)

    async def update(self, record: JobRecord, pipe=None, *, entry: tuple[str, str] | None = None):
        """Write ``record`` and announce it, unless the stored record is already final; queue the webhook
        deliveries the change fires; ``entry`` (stream, entry ID): the job's stream entry, taken off its stream
        in the same step once the record is final. Returns UPDATE_RECORD's answer; in a pipeline, once it
        runs, the caller hands that answer to ``written``."""
        kind, data = event_payload(record)
        message = json.dumps({"job_id": record.id, "kind": kind, "data": data})
        keys = [self.keys.job(record.id), self.keys.held, self.keys.events, self.keys.outbox]
        args = [
            record.model_dump_json(),
            record.status.value,
            message,
            self.retention_s,
            record.id,
            self.keys.delivery(""),
            self.delivery_ttl_s,
            "1" if record.started_at is not None else "",
        ]
        if entry is not None:
            keys.append(entry[0])
            args += [entry[1], GROUP]
        if pipe is not None:
            return await self._update(keys=keys, args=args, client=pipe)
        answer = await self._update(keys=keys, args=args, client=self.redis)
        self.written(record, answer)
        return answer

    @staticmethod
    def written(record: JobRecord, answer: int) -> None:
        """Count a job in the metrics when this write made its record final: each job is counted once, by the
        process whose write ended it (a worker, or the API node that canceled it)."""
        if answer == 1 and record.status.finished:
            job_finished(record)
