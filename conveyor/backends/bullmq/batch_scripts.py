"""conveyor's own scripts for the hot path of a worker on BullMQ's layout:
a batch of claims, and a batch of completions, each in one call.

BullMQ's worker calls moveToActive and moveToFinished once per job; conveyor's
worker claims and acknowledges in batches, and one call per batch spares the
per-call work of BullMQ's scripts (reading the queue's meta, scanning for due
delayed jobs, decoding msgpack arguments, 14 keys a call on the wire). Each
script does, per job, what BullMQ's script does to the layout: the same keys
written, the same events, the same answers. tests/unit/test_bullmq_claim_script.py
and test_bullmq_finish_script.py run both on the same queue states and
compare every key.

CLAIM claims up to `wanted` jobs in one call, each exactly as BullMQ's
moveToActive would (same keys written, same events, same answer per job):
BullMQ's worker calls moveToActive once per job, and conveyor's worker
claims a batch, so one call instead of `wanted` spares the per-call work
(the queue's meta read, the due-delayed scan, the arguments' decoding). What
it keeps from moveToActive: due delayed jobs are promoted first (to the wait
list, or into their priority; 1000 at most, and 1000 more before each next
job while there were that many, as moveToActive does per call); nothing is
taken while the queue is paused, while its global concurrency (meta
`concurrency`) is reached, or while its rate limit (meta `max`/`duration`,
the `limiter` counter) is used up, each checked again before every job; the
wait list is taken from its right end (a legacy "0:" marker there is
dropped), then the prioritized set; each job taken gets its lock (the
claim's token), `processedOn`, `pb` (the worker's name), `ats` + 1, an
"active" event, and counts towards the rate limit unless it is a deferred
failure ("defa"); a marker stays for other workers. It answers {hash, id}
per job taken, in the order taken. With served names, a claim by name first
passes over jobs of other names, which moveToActive cannot (it takes the
head): it finds, in the order the claim takes them (the wait list from its
right end, then the prioritized set), the next `wanted` jobs of a served
name among the first `scan` of each, puts them at the right end of the wait
list in that order (nothing moves when they are there already, as when no
job of another name is ahead), and claims as many as it found. It looks for
no more than the claim may take: none while the queue is paused or at its
global concurrency, no more than its rate limit has left, so a served job is
never moved without being taken. Due delayed jobs are promoted before it
looks.
KEYS: wait, active, prioritized, events, limiter, delayed, meta, pc, marker.
ARGV: the queue's key base, now (ms), token, lock duration (ms), worker
name, wanted, scan, then the served names (none: any name).

FINISH completes a batch of jobs as moveToFinished does with target
"completed" and no fetch of a next job, each fenced by its own lock token:
the answer per job is moveToFinished's (0 done; -1 no such job, -2 its lock
is gone, -6 another token holds it, -3 not active, -4/-9 it has children
pending or failed), or -100 for a job linked to a parent (a flow's child) or
to a deduplication id, which it leaves untouched: BullMQ's moveToFinished
ends those (the caller sends it), since what it does there (the parent's
dependencies, the deduplication key) is not repeated here. Per job done: the
lock and the stalled mark go, the given fields are set, `atm` + 1, then kept
in `completed` with returnvalue and finishedOn, and the oldest beyond `keep`
removed (as BullMQ's count trim: a removed child of a parent still waiting
for it releases the parent), or removed at once when `keep` is 0; a
"completed" event, and "drained" when nothing is left. The events stream is
trimmed to the queue's limit (meta opts.maxLenEvents, set to 10000 when
absent) before the first event, as moveToFinished does, and after the last.
KEYS: active, stalled, events, meta, completed, wait, prioritized.
ARGV: the queue's key base, keep (-1: all), then per job: id, token, now
(ms), returnvalue, n, and n values (field, value, ...) to set.
"""

from __future__ import annotations

import hashlib
from typing import Final

from conveyor.backends.bullmq.scripts import Script

# FINISH's answer for a job it leaves to BullMQ's moveToFinished.
LINKED: Final = -100

# What both scripts begin with. Arguments of redis.call go as text: a Lua
# number is formatted (printf's "%.17g", a few thousand instructions) at
# every call, so the hot ones are passed as the caller's text, as literal
# text, or made with int_text.
_TEXT: Final = """
-- An integer as text without a float's formatting (the usual ones looked up).
local SMALL = {"1", "2", "3", "4", "5", "6", "7", "8", "9"}
local function int_text(n) return SMALL[n] or string.format("%d", n) end
-- A hash field HINCRBY takes: absent (nil, or HMGET's false), or an integer's text.
local function integer(text)
  return not text or text == "0" or string.match(text, "^-?[1-9]%d*$") ~= nil
end
"""

CLAIM: Final = (
    _TEXT
    + """
local wait, active, prioritized, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limiter, delayed, meta, pc, marker = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local base, now, token, lock_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now_text = ARGV[2]
local worker, wanted, scan = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local settings = redis.call("HMGET", meta, "paused", "concurrency", "max", "duration")
local paused, concurrency = settings[1], tonumber(settings[2])
local max_jobs, window = tonumber(settings[3]), settings[4]
local function held_back()
  if paused then return true end
  return concurrency ~= nil and redis.call("LLEN", active) >= concurrency
end
-- Due delayed jobs first, as moveToActive promotes them before it takes a
-- job: at most 1000 a call, so again before each next job while 1000 came.
local due_by = int_text((now + 1) * 0x1000 - 1)
local function promote()
  local due = redis.call("ZRANGEBYSCORE", delayed, "0", due_by, "LIMIT", "0", "1000")
  if #due > 0 then
    redis.call("ZREM", delayed, unpack(due))
    for _, id in ipairs(due) do
      local priority = tonumber(redis.call("HGET", base .. id, "priority")) or 0
      if priority == 0 then
        redis.call("LPUSH", wait, id)
      else
        local order = redis.call("INCR", pc) % 0x100000000
        redis.call("ZADD", prioritized, priority * 0x100000000 + order, id)
      end
      redis.call("XADD", events, "*", "event", "waiting", "jobId", id, "prev", "delayed")
      redis.call("HSET", base .. id, "delay", 0)
    end
    if not held_back() then redis.call("ZADD", marker, "0", "0") end
  end
  return #due == 1000
end
local more_due = promote()
if #ARGV > 7 then
  -- As many as this claim may take now: none while the queue is paused or at
  -- its global concurrency, no more than its rate limit has left. Served jobs
  -- are brought forward only as many as will be taken: one left at the head
  -- of the wait list would have lost its priority, or its place.
  if paused then
    wanted = 0
  elseif concurrency then
    wanted = math.min(wanted, concurrency - redis.call("LLEN", active))
  end
  if max_jobs then
    local used = tonumber(redis.call("GET", limiter) or 0)
    if used < max_jobs then
      wanted = math.min(wanted, max_jobs - used)
    elseif redis.call("PTTL", limiter) > 0 then
      wanted = 0
    end
  end
  local served = {}
  for i = 8, #ARGV do served[ARGV[i]] = true end
  local function is_served(id) return served[redis.call("HGET", base .. id, "name") or ""] end
  local found, from_wait = {}, {}
  -- The wait list is read from its right end in chunks that double, so that
  -- a claim whose next jobs are all served (the usual case) reads only those.
  local in_place = true -- every job read so far is served: found = the right end, in order
  local seen, chunk = 0, math.max(wanted, 1)
  while #found < wanted and seen < scan do
    local part = redis.call("LRANGE", wait, int_text(-math.min(seen + chunk, scan)),
      int_text(-(seen + 1)))
    if #part == 0 then break end
    for i = #part, 1, -1 do
      if #found >= wanted then break end
      if is_served(part[i]) then
        table.insert(found, part[i]); from_wait[part[i]] = true
      else
        in_place = false
      end
    end
    seen, chunk = seen + #part, chunk * 2
  end
  if #found < wanted then
    for _, id in ipairs(redis.call("ZRANGE", prioritized, 0, scan - 1)) do
      if #found >= wanted then break end
      if is_served(id) then table.insert(found, id); in_place = false end
    end
  end
  if not in_place then
    for i = #found, 1, -1 do
      local id = found[i]
      if from_wait[id] then
        redis.call("LREM", wait, -1, id) -- from the right end, which it is near
      else
        redis.call("ZREM", prioritized, id)
      end
      redis.call("RPUSH", wait, id)
    end
  end
  wanted = #found
end
local function rate_limited()
  if not max_jobs or max_jobs > tonumber(redis.call("GET", limiter) or 0) then return false end
  local ttl = redis.call("PTTL", limiter)
  if ttl == 0 then redis.call("DEL", limiter) end
  return ttl > 0
end
-- A field's new value in a flat HGETALL answer: at its place, else added.
local function put(fields, at, name, value)
  if at then
    fields[at] = value
  else
    local last = #fields
    fields[last + 1], fields[last + 2] = name, value
  end
end
local taken = {}
while #taken < wanted and not rate_limited() and not held_back() do
  if more_due and #taken > 0 then more_due = promote() end
  local id = redis.call("RPOPLPUSH", wait, active)
  if id and string.sub(id, 1, 2) == "0:" then
    redis.call("LREM", active, 1, id)
    id = redis.call("RPOPLPUSH", wait, active)
  end
  if not id then
    local head = redis.call("ZPOPMIN", prioritized)
    if #head == 0 then
      redis.call("DEL", pc)
      break
    end
    id = head[1]
    redis.call("LPUSH", active, id)
  end
  local job = base .. id
  if max_jobs and redis.call("HEXISTS", job, "defa") == 0 then
    if redis.call("INCR", limiter) == 1 then
      redis.call("PEXPIRE", limiter, math.floor(math.abs(tonumber(window))))
    end
  end
  redis.call("SET", job .. ":lock", token, "PX", lock_ms)
  redis.call("XADD", events, "*", "event", "active", "jobId", id, "prev", "waiting")
  -- moveToActive's HMSET processedOn/pb and HINCRBY ats, in one write: the
  -- hash is read first for the attempts so far, and the answer patched.
  local fields = redis.call("HGETALL", job)
  local ats_at, started_at, worker_at
  for f = 1, #fields, 2 do
    local name = fields[f]
    if name == "ats" then
      ats_at = f + 1
    elseif name == "processedOn" then
      started_at = f + 1
    elseif name == "pb" then
      worker_at = f + 1
    end
  end
  local attempts = ats_at and fields[ats_at]
  if not integer(attempts) then
    redis.call("HINCRBY", job, "ats", 1) -- fails as moveToActive's would
  end
  attempts = int_text((tonumber(attempts) or 0) + 1)
  redis.call("HSET", job, "processedOn", now_text, "pb", worker, "ats", attempts)
  put(fields, started_at, "processedOn", now_text)
  put(fields, worker_at, "pb", worker)
  put(fields, ats_at, "ats", attempts)
  taken[#taken + 1] = {fields, id}
end
-- moveToActive adds the marker (for other workers) with every job it takes:
-- the same set, once.
if #taken > 0 then redis.call("ZADD", marker, "0", "0") end
return taken
"""
)

FINISH: Final = (
    _TEXT
    + """
local active, stalled, events, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local completed, wait, prioritized = KEYS[5], KEYS[6], KEYS[7]
local base, keep = ARGV[1], tonumber(ARGV[2])
local function drop(job)
  redis.call("DEL", job, job .. ":logs", job .. ":dependencies", job .. ":processed",
    job .. ":failed", job .. ":unsuccessful")
end
-- A removed job that a parent still waits for releases the parent, as
-- BullMQ's removal does (its parent's queue may be another).
local function release_parent(job)
  local parent = redis.call("HGET", job, "parentKey")
  if type(parent) ~= "string" or parent == "" or redis.call("EXISTS", parent) == 0 then return end
  local pending = parent .. ":dependencies"
  if redis.call("SREM", pending, job) == 0 or redis.call("SCARD", pending) > 0 then return end
  local parent_id = string.match(parent, ".*:(.*)")
  local parent_base = string.sub(parent, 1, #parent - #parent_id)
  if redis.call("ZREM", parent_base .. "waiting-children", parent_id) ~= 1 then return end
  local settings = redis.call("HMGET", parent_base .. "meta", "paused", "concurrency")
  local held = settings[1] or (settings[2] and
    redis.call("LLEN", parent_base .. "active") >= tonumber(settings[2]))
  redis.call("RPUSH", parent_base .. "wait", parent_id)
  if not held then redis.call("ZADD", parent_base .. "marker", 0, "0") end
  redis.call("XADD", parent_base .. "events", "*", "event", "waiting", "jobId", parent_id,
    "prev", "waiting-children")
end
local most_events, count, draining = nil, nil, true
local answers, unlocked, done = {}, {}, {}
local i = 3
while i <= #ARGV do
  local id, token, now, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(ARGV[i + 4])
  local first = i + 5
  i = first + n
  local job = base .. id
  local answer = 0
  local links = redis.call("HMGET", job, "parentKey", "parent", "deid", "atm", "ats")
  -- A job a claim took has its attempts counted ("ats"): only a hash
  -- without them needs a look for whether it exists at all.
  if not links[5] and redis.call("EXISTS", job) == 0 then
    answer = -1
  elseif done[id] then
    answer = -2 -- its lock went with its first completion in this call
  else
    local lock = redis.call("GET", job .. ":lock")
    -- An empty set is no key: one look for both, then which one.
    local pending = redis.call("EXISTS", job .. ":dependencies", job .. ":unsuccessful") ~= 0
    if links[1] or links[2] or links[3] then
      answer = -100
    elseif pending and redis.call("SCARD", job .. ":dependencies") ~= 0 then
      answer = -4
    elseif pending and redis.call("ZCARD", job .. ":unsuccessful") ~= 0 then
      answer = -9
    elseif lock ~= token then
      if lock then answer = -6 else answer = -2 end
    end
  end
  if answer == 0 then
    -- The lock and the stalled mark go (at the end, for the whole batch).
    table.insert(unlocked, id); done[id] = true
    if redis.call("LREM", active, "-1", id) < 1 then
      answer = -3
      if n > 0 then redis.call("HSET", job, unpack(ARGV, first, first + n - 1)) end
    end
  end
  if answer == 0 then
    if not most_events then
      most_events = redis.call("HGET", meta, "opts.maxLenEvents")
      if not most_events then
        most_events = "10000"
        redis.call("HSET", meta, "opts.maxLenEvents", most_events)
      end
      redis.call("XTRIM", events, "MAXLEN", "~", most_events)
    end
    local made = links[4] -- attempts made so far ("atm")
    if not integer(made) then redis.call("HINCRBY", job, "atm", 1) end -- fails as moveToFinished's
    local attempts = tonumber(made) or 0
    if keep ~= 0 then
      -- moveToFinished's writes to the hash (the given fields, atm + 1,
      -- returnvalue, finishedOn) in one.
      local made_now = int_text(attempts + 1)
      if n == 4 then -- the worker's (progress, history): no table made
        redis.call("HSET", job, ARGV[first], ARGV[first + 1], ARGV[first + 2], ARGV[first + 3],
          "atm", made_now, "returnvalue", value, "finishedOn", now)
      else
        local values = {unpack(ARGV, first, first + n - 1)}
        for _, v in ipairs({"atm", made_now, "returnvalue", value, "finishedOn", now}) do
          values[#values + 1] = v
        end
        redis.call("HSET", job, unpack(values))
      end
      count = (count or redis.call("ZCARD", completed)) + redis.call("ZADD", completed, now, id)
      if keep > 0 and count > keep then
        -- The oldest beyond `keep` (the lowest scores, as ZREVRANGE's ranks
        -- from `keep` on), removed with their keys.
        local oldest = redis.call("ZPOPMIN", completed, int_text(count - keep))
        for o = #oldest - 1, 1, -2 do -- the newest of them first, as moveToFinished goes
          release_parent(base .. oldest[o])
          drop(base .. oldest[o])
        end
        count = keep
      end
    else
      drop(job)
    end
    redis.call("XADD", events, "*", "event", "completed", "jobId", id, "returnvalue", value,
      "prev", "active")
    -- Nothing here adds to this queue's wait list or prioritized set but
    -- a released parent: once seen waiting, the queue is not drained.
    if draining and redis.call("LLEN", wait) > 0 then draining = false end
    if draining and redis.call("LLEN", active) == 0 and redis.call("ZCARD", prioritized) == 0 then
      redis.call("XADD", events, "*", "event", "drained")
    end
  end
  table.insert(answers, answer)
end
-- moveToFinished trims before each event; once more after the batch's
-- events keeps the stream as near its limit.
if most_events then redis.call("XTRIM", events, "MAXLEN", "~", most_events) end
for from = 1, #unlocked, 1000 do -- unpack takes a few thousand values at most
  local ids, locks = {}, {}
  for n = from, math.min(from + 999, #unlocked) do
    table.insert(ids, unlocked[n]); table.insert(locks, base .. unlocked[n] .. ":lock")
  end
  redis.call("DEL", unpack(locks))
  redis.call("SREM", stalled, unpack(ids))
end
return answers
"""
)


def _script(name: str, keys: int, source: str) -> Script:
    return Script(name, keys, source, hashlib.sha1(source.encode()).hexdigest())


# Run by EVALSHA beside BullMQ's scripts (and loaded with them after a restart).
BATCH_SCRIPTS: Final = {"claim": _script("claim", 9, CLAIM), "finish": _script("finish", 7, FINISH)}
