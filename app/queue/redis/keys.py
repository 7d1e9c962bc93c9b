"""Where the Redis backend keeps things, and the one script that changes a job record.

{p}:model:{name}:jobs  stream of the normal-priority job IDs for one model, read by the consumer group "workers"
                      of the workers that serve that model (a worker reads only the streams of its own models)
{p}:model:{name}:jobs:high, ...:jobs:low   the same for the other priorities (workers read high first, aged
                      by NEXT_ENTRIES)
{p}:jobs, {p}:jobs:high, {p}:jobs:low   the same for jobs that need no model (noise at a given sigma), read by
                      every worker
{p}:job:{id}          hash: record (JSON), status, spec (JSON); expires once the job is final
{p}:held              hash: job ID -> image pixels, for the jobs queued or running (backpressure)
{p}:idem:{key}        job ID for an Idempotency-Key
{p}:events            pub/sub channel: every change of every job (job_id, kind, data)
{p}:cancel            pub/sub channel: job IDs to cancel, heard by every worker
{p}:catalogs          hash: worker ID -> that worker's catalog (JSON: model name -> entry)
{p}:announced         hash: worker ID -> when it last published its catalog (unix time); kept when it stops, so
                      its models stay listed through a restart, and forgotten (PRUNE) after worker_forget_s
{p}:workers           hash: worker ID -> last heartbeat (unix time), while it runs
{p}:queued-models     set: the models jobs have been queued for (ADMIT adds; a worker failing the jobs of a model
                      no worker serves removes it), so workers know which models' streams to look at
{p}:webhooks          sorted set: webhook delivery IDs by due time (app.queue.redis.outbox)
{p}:webhook:{id}      hash: one delivery (url, event, record JSON, attempts)
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
HIGH_FIRST = ("high", "normal", "low")

# When each job stream's next undelivered entry was added: workers read the streams in the order of their
# heads' priority, aged by how long the head has waited (app.jobs.aged_level). KEYS: the streams. ARGV: the
# consumer group. Returns Redis's time in milliseconds, then per stream the ID of its next undelivered
# entry ('' when there is none).
NEXT_ENTRIES = """
local t = redis.call('TIME')
local out = {t[1] * 1000 + math.floor(t[2] / 1000)}
for _, key in ipairs(KEYS) do
  local next_id, last = '', nil
  if redis.call('EXISTS', key) == 1 then
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local name, delivered
      for j = 1, #group, 2 do
        if group[j] == 'name' then name = group[j + 1] end
        if group[j] == 'last-delivered-id' then delivered = group[j + 1] end
      end
      if name == ARGV[1] then last = delivered end
    end
    if last then
      local entries = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', 1)
      if #entries > 0 then next_id = entries[1][1] end
    end
  end
  out[#out + 1] = next_id
end
return out
"""

# Renew a worker's leases: reset the idle time of each entry it still owns (XCLAIM JUSTID keeps the delivery
# count). An entry another worker took over meanwhile (this one was cut off from Redis past its lease) is
# left to that worker. KEYS: the stream. ARGV: the group, the consumer, the entry IDs. Returns the IDs this
# consumer no longer owns.
RENEW = """
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending > 0 and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# A job's entry written again (PUT_BACK, REQUEUE): its job hash, if it is still there, records it for
# DROP_UNREAD. (Lua, prepended to the scripts that use it.)
NOTE_ENTRY = """
local function note_entry(job_key, stream, entry)
  if redis.call('EXISTS', job_key) == 1 then redis.call('HSET', job_key, 'stream', stream, 'entry', entry) end
end
"""

# Put an entry this consumer read but did not take back at the end of its stream as a new entry (its
# delivery count starts again), in one step with the check that this consumer still owns it: one that another
# worker took over meanwhile is that worker's. KEYS: the stream. ARGV: the group, the consumer, the entry ID,
# the job key prefix ("{p}:job:"). Returns 1 when put back, 0 when not owned here, -1 when it was deleted
# already (acknowledged only).
PUT_BACK = (
    NOTE_ENTRY
    + """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #pending == 0 then return 0 end
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if #entry == 0 then return -1 end
redis.call('XDEL', KEYS[1], ARGV[3])
local fields = entry[1][2]
local new = redis.call('XADD', KEYS[1], '*', unpack(fields))
for i = 1, #fields, 2 do
  if fields[i] == 'job' then note_entry(ARGV[4] .. fields[i + 1], KEYS[1], new) end
end
return 1
"""
)

# Queue a job again at the end of a stream, taking its entry off the one it was read from, in one step.
# KEYS: the stream it leaves, the stream it joins, the job hash, the queued-models set. ARGV: the group, the
# entry ID it leaves, the job ID, its model ('' for none: not added to the set). Returns the new entry's ID.
REQUEUE = (
    NOTE_ENTRY
    + """
local new = redis.call('XADD', KEYS[2], '*', 'job', ARGV[3])
note_entry(KEYS[3], KEYS[2], new)
if ARGV[4] ~= '' then redis.call('SADD', KEYS[4], ARGV[4]) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return new
"""
)

# Forget the workers silent since before a cutoff: their heartbeats, and their catalogs (so the models only they
# served leave the merged catalog). Checked and deleted in one step, so a worker beating again meanwhile is not
# forgotten. KEYS: workers hash, announced hash, catalogs hash. ARGV: the cutoff (unix time). Returns the IDs
# whose catalogs were forgotten.
PRUNE = """
local cutoff = tonumber(ARGV[1])
local beats = redis.call('HGETALL', KEYS[1])
for i = 1, #beats, 2 do
  if tonumber(beats[i + 1]) < cutoff then redis.call('HDEL', KEYS[1], beats[i]) end
end
local gone = {}
local announced = redis.call('HGETALL', KEYS[2])
for i = 1, #announced, 2 do
  if tonumber(announced[i + 1]) < cutoff then gone[#gone + 1] = announced[i] end
end
for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do
  if redis.call('HEXISTS', KEYS[2], id) == 0 then gone[#gone + 1] = id end  -- a catalog never dated
end
for _, id in ipairs(gone) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return gone
"""

# Delete the consumers of the group "workers" that hold no entries and have been idle for a while (workers
# that stopped or died; a live one that is deleted is made again by its next read, holding nothing lost), or
# that are this worker's own at a clean stop: every worker ID becomes a consumer of each stream it reads, and
# Redis keeps them until they are deleted. Checked and deleted in one step, so no entry read meanwhile is
# dropped with its consumer. KEYS: streams. ARGV: the group, the idle time in ms, a consumer to delete
# whatever its idle time ('' for none). Returns how many were deleted.
PRUNE_CONSUMERS = """
local deleted = 0
for _, stream in ipairs(KEYS) do
  local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, ARGV[1])
  if not consumers.err then  -- no such stream or group: nothing to delete
    for _, consumer in ipairs(consumers) do
      local field = {}
      for i = 1, #consumer, 2 do field[consumer[i]] = consumer[i + 1] end
      if field['pending'] == 0 and (field['idle'] >= tonumber(ARGV[2]) or field['name'] == ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], field['name'])
        deleted = deleted + 1
      end
    end
  end
end
return deleted
"""

# Take a model off the set of models with queued jobs once none of its streams holds an entry (checked and
# removed in one step: a job queued meanwhile keeps it there). KEYS: the set, the model's streams. ARGV: the
# model. Returns 1 if removed.
FORGET_MODEL = """
for i = 2, #KEYS do
  if redis.call('XLEN', KEYS[i]) > 0 then return 0 end
end
redis.call('SREM', KEYS[1], ARGV[1])
return 1
"""

# Change a record unless it is already final (so a late "succeeded" cannot undo a cancel, nor the
# reverse), and queue the webhook deliveries the change fires in the same step (the rule of
# app.jobs.webhook_events). KEYS: job hash, active hash, events channel, webhook outbox. ARGV: record JSON,
# status, event JSON, retention seconds, job ID, delivery key prefix ("{p}:webhook:"), delivery TTL,
# "1" if the job has started (its record has a ``started_at``) else "", and optionally the consumer group and
# the ID of the job's stream entry, with the stream as KEYS[5]. The job hash's ``started`` field records that
# ``started`` fired. A final record takes its entry off the stream in the same step (XACK, XDEL after the
# record's HSET: when Redis is full the script is refused at that first write, before them), so an entry is
# never gone while the record it stood for was not written (a worker stopping then would lose the job).
# Returns 1 if changed (or if the stored record is this very record: the same write run again, after a
# reply lost or a batch retried, is counted by whoever sees its 1), 0 if the record was already final,
# -1 if it is gone (expired, or lost by a Redis restart without persistence).
# An Idempotency-Key's claim outlives its job's record by this much, so a retry finds the job while it is kept.
CLAIM_MARGIN_S = 3600
# ... and lasts this long while its job waits or runs (UPDATE_RECORD sets it as above once the job ends; this
# bounds a claim whose job was ended by a worker older than that rule)
CLAIM_WHILE_KEPT_S = 7 * 24 * 3600
UPDATE_RECORD = """
local function fire(event)
  local wanted = redis.call('HGET', KEYS[1], 'webhook_events')
  if (not wanted) or (not string.find(',' .. wanted .. ',', ',' .. event .. ',', 1, true)) then return end
  local id = 'msg_' .. ARGV[5] .. '_' .. event
  local key = ARGV[6] .. id
  redis.call('HSET', key, 'url', redis.call('HGET', KEYS[1], 'webhook'), 'event', event, 'record', ARGV[1],
             'attempts', 0)
  redis.call('EXPIRE', key, ARGV[7])
  local now = redis.call('TIME')  -- due now, by the clock every node's claims read
  redis.call('ZADD', KEYS[4], now[1] + now[2] / 1e6, id)
end
local final = ARGV[2] == 'succeeded' or ARGV[2] == 'failed' or ARGV[2] == 'canceled'
local function retire()  -- the job's stream entry, once its record is final
  if final and ARGV[9] and ARGV[9] ~= '' then
    redis.call('XACK', KEYS[5], ARGV[10], ARGV[9])
    redis.call('XDEL', KEYS[5], ARGV[9])
  end
end
local current = redis.call('HGET', KEYS[1], 'status')
if not current then
  redis.call('HDEL', KEYS[2], ARGV[5])  -- the record is gone (expired, evicted): it holds nothing any more
  return -1
end
if current == 'succeeded' or current == 'failed' or current == 'canceled' then
  retire()
  if redis.call('HGET', KEYS[1], 'record') == ARGV[1] then return 1 end  -- this write, run again
  return 0
end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', ARGV[2])
-- once per job: a job a stopping worker handed back is queued again, and its next start fires nothing
if current == 'queued' and ARGV[8] == '1' and redis.call('HSETNX', KEYS[1], 'started', 1) == 1 then
  fire('started')
end
if final then fire('completed') end
if final then
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4])))
  redis.call('HDEL', KEYS[2], ARGV[5])
  local claim = redis.call('HGET', KEYS[1], 'claim')  -- an Idempotency-Key's: it outlives the record
  if claim then redis.call('EXPIRE', claim, math.ceil(tonumber(ARGV[4])) + CLAIM_MARGIN_S) end
end
retire()
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
""".replace("CLAIM_MARGIN_S", str(CLAIM_MARGIN_S))


# Replace an Idempotency-Key's claim that names no job any more (its record expired or was evicted) with
# this request's, only if it still holds what the request read: of two requests replaying the key at once,
# one makes the job and the other finds it. KEYS: the claim. ARGV: the claim read, the new claim, its TTL (s).
# Returns 1 if replaced.
REPLACE_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


# Admit a job unless the deployment already holds ``queue_limit`` jobs or ``queue_max_pixels`` image pixels
# (checked and written in one step, so API nodes cannot overshoot together). KEYS: job hash, held hash,
# stream, queued-models set. ARGV: record JSON, spec JSON, job ID, queue limit, the job's pixels, pixel
# limit, the job key prefix ("{p}:job:"), the owner ('' for none), the owner's job cap ('' for none), the
# webhook URL and its events, comma-separated ('' for none), the job's model ('' for none), the key of its
# Idempotency-Key's claim ('' for none). Returns 1 if
# admitted, 0 when the queue is full, -1 when the owner holds its cap. Entries whose record is gone or final
# are swept first. A job hash that exists already says this very call ran before (a job ID is new for each
# request): the API node sends ADMIT once more when the connection dropped before its reply came
# (RedisJobQueue._admit_once), and a second run would put the job on its stream twice. That call answers 1.
# (Keys read through ARGV[7] are in the same deployment prefix; a Redis Cluster would need hash tags.)
ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local held, count = 0, 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  -- a job whose record is gone or final (lost by an eviction, a crash mid-write) holds nothing any more
  local status = redis.call('HGET', ARGV[7] .. entries[i], 'status')
  if (not status) or status == 'succeeded' or status == 'failed' or status == 'canceled' then
    redis.call('HDEL', KEYS[2], entries[i])
  else
    held, count = held + tonumber(entries[i + 1]), count + 1
  end
end
if ARGV[9] ~= '' then  -- the key's own cap on jobs queued or running (before the queue's, as in-process)
  local mine = 0
  for i = 1, #entries, 2 do
    if redis.call('HGET', ARGV[7] .. entries[i], 'owner') == ARGV[8] then mine = mine + 1 end
  end
  if mine >= tonumber(ARGV[9]) then return -1 end
end
if count >= tonumber(ARGV[4]) then return 0 end
if held > 0 and held + tonumber(ARGV[5]) > tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', 'queued', 'spec', ARGV[2], 'owner', ARGV[8])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'webhook', ARGV[10], 'webhook_events', ARGV[11]) end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
local entry = redis.call('XADD', KEYS[3], '*', 'job', ARGV[3])
redis.call('HSET', KEYS[1], 'stream', KEYS[3], 'entry', entry)  -- for DROP_UNREAD, should it be canceled unread
if ARGV[12] ~= '' then redis.call('SADD', KEYS[4], ARGV[12]) end
if ARGV[13] ~= '' then  -- its Idempotency-Key's claim lasts while the job does: set again once it ends
  redis.call('EXPIRE', ARGV[13], CLAIM_WHILE_KEPT_S)
  redis.call('HSET', KEYS[1], 'claim', ARGV[13])
end
return 1
""".replace("CLAIM_WHILE_KEPT_S", str(CLAIM_WHILE_KEPT_S))


# Take a canceled job's entry off its stream if no worker has read it yet (a read one is retired by its
# worker): left there, it counted as work in the stream's length, which KEDA scales workers by, until a worker
# with a free place read it. The entry is the latest the job hash records (ADMIT's, or NOTE_ENTRY's for a job
# put back on a stream since). KEYS: the job hash. ARGV: the consumer group. Returns 1 if taken off.
DROP_UNREAD = """
local found = redis.call('HMGET', KEYS[1], 'stream', 'entry')
local stream, entry = found[1], found[2]
if (not stream) or (not entry) then return 0 end
local ok, pending = pcall(redis.call, 'XPENDING', stream, ARGV[1], entry, entry, 1)
if ok and #pending > 0 then return 0 end  -- a worker has it
return redis.call('XDEL', stream, entry)
"""


@dataclass(frozen=True)
class Keys:
    prefix: str

    def stream(self, priority: str = "normal", model: str | None = None) -> str:
        """The stream of the jobs of one priority for ``model`` (None: the jobs that need no model)."""
        base = f"{self.prefix}:jobs" if model is None else f"{self.prefix}:model:{model}:jobs"
        return base if priority == "normal" else f"{base}:{priority}"

    def streams(self, models: list[str]) -> list[tuple[str, str]]:
        """(priority, stream) for the jobs a worker serving ``models`` reads: highest priority first, and in
        each priority the jobs that need no model, then each model's."""
        return [
            (priority, self.stream(priority, model)) for priority in HIGH_FIRST for model in [None, *sorted(models)]
        ]

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    @property
    def held(self) -> str:
        return f"{self.prefix}:held"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}:cancel"

    def job_stream(self, spec) -> str:
        """The stream a job spec goes on: its priority's, for its model."""
        return self.stream(getattr(spec, "priority", "normal"), spec.model)

    @property
    def catalogs(self) -> str:
        return f"{self.prefix}:catalogs"

    @property
    def announced(self) -> str:
        return f"{self.prefix}:announced"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def queued_models(self) -> str:
        return f"{self.prefix}:queued-models"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}:webhooks"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:webhook:{delivery_id}"
