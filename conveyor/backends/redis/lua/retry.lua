-- ARGV: prefix, id, now ("" = the server's). Returns the record when the failed/cancelled job is queued again.
local id = ARGV[2]
local key = jkey(id)
local h = redis.call("HMGET", key, "state", "queue", "priority", "attempts", "max_retries")
if h[1] ~= "failed" and h[1] ~= "cancelled" then return false end
local attempts, max_retries = tonumber(h[4]), tonumber(h[5])
-- A failed job gets exactly one more attempt; a cancelled one keeps what was left.
if h[1] == "failed" then max_retries = attempts else max_retries = math.max(max_retries, attempts) end
local now_text = now_or_server(ARGV[3])
redis.call("ZREM", done_key(h[2], h[1]), id)
redis.call("HSET", key, "state", "queued", "max_retries", max_retries, "run_at", now_text,
  "finished_at", "", "stalls", 0, "cancel_requested", 0)
wake(h[2], make_ready(id, h[2], h[3], now_text), 1)
return record(id)
