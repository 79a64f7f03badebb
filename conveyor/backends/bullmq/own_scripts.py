"""conveyor's own Lua scripts (not BullMQ's), for what BullMQ's scripts do
not do; they keep BullMQ's layout exactly.

FAIL_PENDING ends a job that is not running (waiting, prioritized, paused or
delayed) in `failed`, with its reason and finish time, and QueueEvents
hears "failed"; atomically, so a worker that took it meanwhile keeps it (the
script then answers 0). conveyor uses it for a cancel (BullMQ has no
cancelled state: the hash gets the cancelled mark) and for a job that
stalled too often, which BullMQ would fail at its next claim ("defa").
KEYS: wait, paused, prioritized, delayed, failed, events, the job hash.
ARGV: job id, now (ms), reason, a field to set to "1" ("" = none).

ADVANCE_SCHEDULE is the compare-and-set of a recurring schedule's tick on
the records RedisStores keeps. KEYS: the schedule, the due set. ARGV:
expected next_run, next_run, last_run ("" = keep), last_error, name.
"""

from __future__ import annotations

from typing import Final

FAIL_PENDING: Final = """
local id = ARGV[1]
local removed = redis.call("LREM", KEYS[1], 0, id) + redis.call("LREM", KEYS[2], 0, id)
  + redis.call("ZREM", KEYS[3], id) + redis.call("ZREM", KEYS[4], id)
if removed == 0 then return 0 end
redis.call("ZADD", KEYS[5], ARGV[2], id)
redis.call("HSET", KEYS[7], "failedReason", ARGV[3], "finishedOn", ARGV[2])
redis.call("HDEL", KEYS[7], "defa")
if ARGV[4] ~= "" then redis.call("HSET", KEYS[7], ARGV[4], "1") end
redis.call("XADD", KEYS[6], "MAXLEN", "~", 10000, "*", "event", "failed", "jobId", id,
  "failedReason", ARGV[3], "prev", "waiting")
return 1
"""

ADVANCE_SCHEDULE: Final = """
local h = redis.call("HMGET", KEYS[1], "enabled", "next_run")
if h[1] ~= "1" or h[2] ~= ARGV[1] then return 0 end
redis.call("HSET", KEYS[1], "next_run", ARGV[2], "last_error", ARGV[4])
if ARGV[3] ~= "" then redis.call("HSET", KEYS[1], "last_run", ARGV[3]) end
redis.call("ZADD", KEYS[2], ARGV[2], ARGV[5])
return 1
"""
