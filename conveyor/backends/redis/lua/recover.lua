-- ARGV: prefix, now ("" = the server's), max_stalled, keep_failed. Returns the
-- records of the jobs touched.
local now_text = now_or_server(ARGV[2])
local now, max_stalled = tonumber(now_text), tonumber(ARGV[3])
local out = {}
local batch = batch_new()
for _, queue in ipairs(redis.call("SMEMBERS", P .. ":queues")) do
  local running = running_key(queue)
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", running, "-inf", "(" .. now_text, "LIMIT", 0, 1000)) do
    local key = jkey(id)
    local h = redis.call("HMGET", key, "state", "lease_until", "priority", "cancel_requested",
      "attempts")
    redis.call("ZREM", running, id)
    if h[1] == "running" and tonumber(h[2]) < now then
      end_attempt(key, "stalled", now_text, "lease expired at attempt " .. h[5] .. " (worker lost)")
      local stalls = redis.call("HINCRBY", key, "stalls", 1)
      if h[4] == "1" then
        finalize(batch, id, queue, "cancelled", now_text, "", {"error", "cancelled"})
      elseif stalls > max_stalled then
        finalize(batch, id, queue, "failed", now_text, ARGV[4], {"error", "lease expired " .. stalls ..
          " times (worker lost); max_stalled is " .. max_stalled})
      else
        redis.call("HSET", key, "state", "queued", "run_at", now_text, "started_at", "", "token", "")
        wake(queue, make_ready(id, queue, h[3], now_text), 1)
      end
      out[#out + 1] = record(id)
    end
  end
end
batch_apply(batch) -- trims last, so the records above were read while they existed
return out
