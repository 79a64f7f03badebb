-- ARGV: prefix, keep_completed ("" = all), keep_failed, n, then 9 values per outcome:
-- id, token, kind, at, result, error, run_at, logs, progress. Returns 1/0 per outcome.
local keep = {completed = ARGV[2], failed = ARGV[3], cancelled = ""}
local n = tonumber(ARGV[4])
local out = {}
for i = 0, n - 1 do
  local a = 5 + i * 9
  local id, token, kind, at = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3]
  local result, err, run_at, logs, progress = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
  local key = jkey(id)
  local h = redis.call("HMGET", key, "state", "attempts", "queue", "priority", "cancel_requested")
  if h[1] ~= "running" or tonumber(h[2]) ~= token then
    out[#out + 1] = 0
  else
    out[#out + 1] = 1
    local queue = h[3]
    redis.call("ZREM", P .. ":running", id)
    append_logs(key, logs)
    if progress ~= "" then redis.call("HSET", key, "progress", progress) end
    if h[5] == "1" and (kind == "queued" or kind == "scheduled") then
      kind = "cancelled" -- a cancel outlives the attempt
      if err == "" then err = "cancelled" end
    end
    if kind == "queued" then
      redis.call("HINCRBY", key, "attempts", -1)
      redis.call("HSET", key, "state", "queued", "started_at", "", "run_at", at)
      make_ready(id, queue, h[4])
      count(queue, "running", -1)
      count(queue, "queued", 1)
      wake(queue, 1)
    elseif kind == "scheduled" then
      if run_at == "" then run_at = at end
      redis.call("HSET", key, "error", err, "run_at", run_at)
      count(queue, "running", -1)
      if tonumber(run_at) > tonumber(at) then
        redis.call("HSET", key, "state", "scheduled")
        redis.call("ZADD", P .. ":scheduled", run_at, id)
        count(queue, "scheduled", 1)
      else
        redis.call("HSET", key, "state", "queued")
        make_ready(id, queue, h[4])
        count(queue, "queued", 1)
        wake(queue, 1)
      end
    else
      if kind == "completed" then
        redis.call("HSET", key, "result", result, "error", "", "progress", 100)
      else
        redis.call("HSET", key, "result", result, "error", err)
      end
      finalize(id, queue, "running", kind, at, keep[kind])
    end
  end
end
return out
