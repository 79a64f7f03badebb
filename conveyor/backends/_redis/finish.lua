-- ARGV: prefix, keep_completed ("" = all), keep_failed, outcomes (JSON
-- [[id, token, kind, at, result, error, run_at, logs, progress], ...]).
-- Returns 1/0 per outcome: 0 when the token no longer holds the job.
local keep = {completed = ARGV[2], failed = ARGV[3], cancelled = ""}
local out = {}
for _, o in ipairs(cjson.decode(ARGV[4])) do
  local id, kind, at, result, err, run_at = o[1], o[3], o[4], o[5], o[6], o[7]
  local key = jkey(id)
  local h = redis.call("HMGET", key, "state", "attempts", "queue", "priority", "cancel_requested")
  if h[1] ~= "running" or tonumber(h[2]) ~= tonumber(o[2]) then
    out[#out + 1] = 0
  else
    out[#out + 1] = 1
    local queue = h[3]
    redis.call("ZREM", running_key(queue), id)
    append_logs(key, o[8])
    if o[9] ~= "" then redis.call("HSET", key, "progress", o[9]) end
    if h[5] == "1" and (kind == "queued" or kind == "scheduled") then
      kind = "cancelled" -- a cancel outlives the attempt
      if err == "" then err = "cancelled" end
    end
    if kind == "queued" then
      redis.call("HINCRBY", key, "attempts", -1)
      redis.call("HSET", key, "state", "queued", "started_at", "", "run_at", at)
      make_ready(id, queue, h[4])
      wake(queue, 1)
    elseif kind == "scheduled" then
      if run_at == "" then run_at = at end
      if tonumber(run_at) > tonumber(at) then
        redis.call("HSET", key, "error", err, "run_at", run_at, "state", "scheduled")
        redis.call("ZADD", scheduled_key(queue), run_at, id)
      else
        redis.call("HSET", key, "error", err, "run_at", run_at, "state", "queued")
        make_ready(id, queue, h[4])
        wake(queue, 1)
      end
    elseif kind == "completed" then
      finalize(id, queue, kind, at, keep[kind], {"result", result, "error", "", "progress", 100})
    else
      finalize(id, queue, kind, at, keep[kind], {"result", result, "error", err})
    end
  end
end
return out
