"""Where the Redis backend keeps things, and the one script that changes a job record.

    {p}:jobs              stream of submitted job IDs, read by the consumer group "workers"
    {p}:job:{id}          hash: record (JSON), status, spec (JSON); expires once the job is final
    {p}:active            set of job IDs queued or running (the backpressure count)
    {p}:idem:{key}        job ID for an Idempotency-Key
    {p}:events            pub/sub channel: every change of every job (job_id, kind, data)
    {p}:cancel            pub/sub channel: job IDs to cancel, heard by every worker
    {p}:models            hash: model name -> catalog entry (JSON), published by workers
    {p}:workers           hash: worker ID -> last heartbeat (unix time)
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
FINAL = ("succeeded", "failed", "canceled")

# Change a record unless it is already final (so a late "succeeded" cannot undo a cancel, nor the
# reverse). KEYS: job hash, active set, events channel. ARGV: record JSON, status, event JSON,
# retention seconds, job ID. Returns 1 if changed.
UPDATE_RECORD = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if current == 'succeeded' or current == 'failed' or current == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', ARGV[2])
if ARGV[2] == 'succeeded' or ARGV[2] == 'failed' or ARGV[2] == 'canceled' then
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4])))
  redis.call('SREM', KEYS[2], ARGV[5])
end
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def stream(self) -> str:
        return f"{self.prefix}:jobs"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    @property
    def active(self) -> str:
        return f"{self.prefix}:active"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}:cancel"

    @property
    def models(self) -> str:
        return f"{self.prefix}:models"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"
