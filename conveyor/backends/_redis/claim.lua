-- ARGV: prefix, now, lease, limit, n_queues, queues...
local now, lease, limit, nq = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

-- Promote due scheduled jobs (delays, retry backoff) into their ready sets.
local due = redis.call("ZRANGEBYSCORE", P .. ":scheduled", "-inf", now, "LIMIT", 0, 1000)
for _, id in ipairs(due) do
  redis.call("ZREM", P .. ":scheduled", id)
  local h = redis.call("HMGET", jkey(id), "queue", "priority", "state")
  if h[3] == "scheduled" then
    redis.call("HSET", jkey(id), "state", "queued")
    make_ready(id, h[1], h[2])
    count(h[1], "scheduled", -1)
    count(h[1], "queued", 1)
  end
end

local ids = {}
if nq == 1 then
  local popped = redis.call("ZPOPMIN", ready_key(ARGV[6]), limit)
  for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
else
  -- Several queues: take the lowest score across them, one job at a time.
  while #ids < limit do
    local best_key, best_id, best_score = nil, nil, nil
    for i = 1, nq do
      local key = ready_key(ARGV[5 + i])
      local head = redis.call("ZRANGE", key, 0, 0, "WITHSCORES")
      if head[1] and (best_score == nil or tonumber(head[2]) < best_score) then
        best_key, best_id, best_score = key, head[1], tonumber(head[2])
      end
    end
    if not best_key then break end
    redis.call("ZREM", best_key, best_id)
    ids[#ids + 1] = best_id
  end
end

local out = {}
local until_ = now + lease
for _, id in ipairs(ids) do
  local key = jkey(id)
  local queue = redis.call("HGET", key, "queue")
  redis.call("HINCRBY", key, "attempts", 1)
  redis.call("HSET", key, "state", "running", "started_at", ARGV[2], "lease_until", until_,
    "cancel_requested", 0)
  redis.call("ZADD", P .. ":running", until_, id)
  count(queue, "queued", -1)
  count(queue, "running", 1)
  out[#out + 1] = record(id)
end
return out
