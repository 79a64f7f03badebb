"""conveyor's Lua for recurring schedules kept as BullMQ job schedulers
(schedules.py says how they map).

PUT_SCHEDULE writes a conveyor schedule as a job scheduler: the `repeat:<id>`
hash (BullMQ's fields and conveyor's `cv...` ones) and its place in the
`repeat` sorted set (score: next run in ms; a disabled schedule has none, so
Node does not list it). Writing over a scheduler Node made takes it over: its
pending iteration job (`repeat:<id>:<ms>`, still delayed) is removed, as
BullMQ's own override does, so that tick is not run twice.
With an expected next run, a compare-and-set: the scheduler is replaced only
while it still exists and (a conveyor one) its `cvnext` and `cvenabled` are
those read before (a tick fired, an enable, disable or delete since: nothing
written, answer 0).
KEYS: repeat, the scheduler hash, delayed, events.
ARGV: id, the queue's key base, "1" enabled | "0", next run (ms), expected
next run (text, as stored; "" = write in any case), expected enabled, then
the hash's field/value pairs.

FIRE_SCHEDULE is a conveyor tick in one atomic step: the compare-and-set of
the schedule's next run (`cvnext` must still be the value the scheduler read,
and the schedule enabled) and the adds of the tick's jobs, by BullMQ's own
add scripts run inside it (`fire_script` wraps the installed package's
sources, each as a Lua function taking KEYS and ARGV), so a crash or a lost
connection can no longer advance a tick and drop its jobs.
KEYS: repeat, the scheduler hash.
ARGV: id, expected next (text, as stored), next (text), next (ms), last run
("" = keep), last error, the job count, then per job: which add script,
its key count n, its n keys, its three arguments.
Answer: 0 when another scheduler fired the tick, else {1, then per job its
id and 1 if it existed before (a duplicate) else 0}.
"""

from __future__ import annotations

from typing import Final

from conveyor.backends.bullmq.scripts import Script

# The BullMQ scripts a tick's job may be added with (backend.py's `_add`).
ADD_SCRIPTS: Final = ("addStandardJob", "addPrioritizedJob", "addDelayedJob")

PUT_SCHEDULE: Final = """
local id, base = ARGV[1], ARGV[2]
if ARGV[5] ~= "" then
  -- Gone since the read, or changed (Node's own schedulers have no cvnext).
  if redis.call("EXISTS", KEYS[2]) == 0 then return 0 end
  local h = redis.call("HMGET", KEYS[2], "cvnext", "cvenabled")
  if h[1] and (tonumber(h[1]) ~= tonumber(ARGV[5]) or h[2] ~= ARGV[6]) then return 0 end
end
local old = redis.call("ZSCORE", KEYS[1], id)
if old and redis.call("HEXISTS", KEYS[2], "cvnext") == 0 then
  local pending = "repeat:" .. id .. ":" .. old
  if redis.call("ZREM", KEYS[3], pending) == 1 then
    redis.call("DEL", base .. pending, base .. pending .. ":logs")
    redis.call("XADD", KEYS[4], "*", "event", "removed", "jobId", pending, "prev", "delayed")
  end
end
local iterations = redis.call("HGET", KEYS[2], "ic") or "1"
redis.call("DEL", KEYS[2])
redis.call("HSET", KEYS[2], "ic", iterations, unpack(ARGV, 7))
if ARGV[3] == "1" then
  redis.call("ZADD", KEYS[1], ARGV[4], id)
else
  redis.call("ZREM", KEYS[1], id)
end
return 1
"""

_FIRE_BODY: Final = """
local id = ARGV[1]
local h = redis.call("HMGET", KEYS[2], "cvenabled", "cvnext")
if h[1] ~= "1" or h[2] ~= ARGV[2] then return 0 end
redis.call("HSET", KEYS[2], "cvnext", ARGV[3], "cvlast_error", ARGV[6])
if ARGV[5] ~= "" then redis.call("HSET", KEYS[2], "cvlast_run", ARGV[5]) end
redis.call("ZADD", KEYS[1], ARGV[4], id)
local count = tonumber(ARGV[7])
if count > 0 then redis.call("HINCRBY", KEYS[2], "ic", count) end
local out, at = {1}, 8
for _ = 1, count do
  local add, n = ARGV[at], tonumber(ARGV[at + 1])
  local keys = {}
  for k = 1, n do keys[k] = ARGV[at + 1 + k] end
  local args = {ARGV[at + n + 2], ARGV[at + n + 3], ARGV[at + n + 4]}
  at = at + n + 5
  local job_key = cmsgpack.unpack(args[1])
  local existed = redis.call("EXISTS", job_key[1] .. job_key[2])
  table.insert(out, tostring(adders[add](keys, args)))
  table.insert(out, existed)
end
return out
"""


def fire_script(scripts: dict[str, Script]) -> str:
    """FIRE_SCHEDULE's source: BullMQ's add scripts as local functions (their
    KEYS and ARGV become the functions' parameters), then conveyor's part."""
    parts = ["local adders = {}"]
    for name in ADD_SCRIPTS:
        parts.append(f"adders[{name!r}] = function(KEYS, ARGV)\n{scripts[name].source}\nend")
    parts.append(_FIRE_BODY)
    return "\n".join(parts)
