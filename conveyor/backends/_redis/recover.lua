-- ARGV: prefix, now, max_stalled, keep_failed. Returns the records of the jobs touched.
local now, max_stalled = tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call("ZRANGEBYSCORE", P .. ":running", "-inf", "(" .. ARGV[2], "LIMIT", 0, 1000)
local out = {}
for _, id in ipairs(expired) do
  local key = jkey(id)
  local h = redis.call("HMGET", key, "state", "lease_until", "queue", "priority", "cancel_requested")
  redis.call("ZREM", P .. ":running", id)
  if h[1] == "running" and tonumber(h[2]) < now then
    local stalls = redis.call("HINCRBY", key, "stalls", 1)
    local queue = h[3]
    if h[5] == "1" then
      redis.call("HSET", key, "error", "cancelled")
      finalize(id, queue, "running", "cancelled", ARGV[2], "")
    elseif stalls > max_stalled then
      redis.call("HSET", key, "error", "lease expired " .. stalls ..
        " times (worker lost); max_stalled is " .. max_stalled)
      finalize(id, queue, "running", "failed", ARGV[2], ARGV[4])
    else
      redis.call("HSET", key, "state", "queued", "run_at", ARGV[2], "started_at", "")
      make_ready(id, queue, h[4])
      count(queue, "running", -1)
      count(queue, "queued", 1)
      wake(queue, 1)
    end
    if redis.call("EXISTS", key) == 1 then out[#out + 1] = record(id) end
  end
end
return out
