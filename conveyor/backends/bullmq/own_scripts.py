"""conveyor's own Lua scripts (not BullMQ's), for what BullMQ's scripts do
not do; they keep BullMQ's layout exactly.

FAIL_PENDING ends a job that is not running (waiting, prioritized, paused or
delayed) in `failed`, with its reason and finish time, and QueueEvents
hears "failed" (its prev "delayed" or "waiting", where it was); atomically,
so a worker that took it meanwhile keeps it (the script then answers 0).
conveyor uses it for a cancel (BullMQ has no cancelled state: the hash gets
the cancelled mark) and for a job that stalled too often, which BullMQ
would fail at its next claim ("defa").
KEYS: wait, paused, prioritized, delayed, failed, events, the job hash.
ARGV: job id, now (ms), reason, a field to set to "1" ("" = none).

HAND_BACK returns a running job to the queue unfinished, the attempt not
counted (BullMQ's moveJobFromActiveToWait counts it, and always puts it in
front): fenced by the lock token; to the front (where the next claim takes
it) or the back; a prioritized job back into its priority; paused when the
queue is; QueueEvents hears "waiting"; and a marker wakes the workers,
except for "passed" (a job a claim by name passed over: in front, waking
nobody, or the worker that passed it would spin).
KEYS: active, wait, paused, prioritized, pc, stalled, meta, marker, events,
the job hash, its lock. ARGV: job id, token, "front" | "back" | "passed".

"""

from __future__ import annotations

from typing import Final

FAIL_PENDING: Final = """
local id = ARGV[1]
local prev = "delayed"
if redis.call("ZREM", KEYS[4], id) == 0 then
  prev = "waiting"
  local removed = redis.call("LREM", KEYS[1], 0, id) + redis.call("LREM", KEYS[2], 0, id)
    + redis.call("ZREM", KEYS[3], id)
  if removed == 0 then return 0 end
end
redis.call("ZADD", KEYS[5], ARGV[2], id)
redis.call("HSET", KEYS[7], "failedReason", ARGV[3], "finishedOn", ARGV[2])
redis.call("HDEL", KEYS[7], "defa")
if ARGV[4] ~= "" then redis.call("HSET", KEYS[7], ARGV[4], "1") end
redis.call("XADD", KEYS[6], "MAXLEN", "~", 10000, "*", "event", "failed", "jobId", id,
  "failedReason", ARGV[3], "prev", prev)
return 1
"""

HAND_BACK: Final = """
local id = ARGV[1]
if redis.call("GET", KEYS[11]) ~= ARGV[2] then return 0 end
if redis.call("LREM", KEYS[1], 1, id) == 0 then return 0 end
redis.call("DEL", KEYS[11])
redis.call("SREM", KEYS[6], id)
redis.call("HINCRBY", KEYS[10], "ats", -1)
redis.call("HDEL", KEYS[10], "processedOn")
local priority = tonumber(redis.call("HGET", KEYS[10], "priority")) or 0
if priority > 0 then
  local order = 0
  if ARGV[3] == "back" then order = redis.call("INCR", KEYS[5]) % 0x100000000 end
  redis.call("ZADD", KEYS[4], priority * 0x100000000 + order, id)
else
  local target = KEYS[2]
  if redis.call("HEXISTS", KEYS[7], "paused") == 1 then target = KEYS[3] end
  if ARGV[3] == "back" then redis.call("LPUSH", target, id) else redis.call("RPUSH", target, id) end
end
if ARGV[3] == "front" then redis.call("ZADD", KEYS[8], 0, "0") end
redis.call("XADD", KEYS[9], "MAXLEN", "~", 10000, "*", "event", "waiting", "jobId", id,
  "prev", "active")
return 1
"""
