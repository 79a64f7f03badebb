-- ARGV: prefix, now, lease, limit, queues...
local now, lease, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local nq = #ARGV - 4

-- Promote due scheduled jobs (delays, retry backoff) of these queues.
for i = 1, nq do
  local queue = ARGV[4 + i]
  local due = redis.call("ZRANGEBYSCORE", scheduled_key(queue), "-inf", now, "LIMIT", 0, 1000)
  for _, id in ipairs(due) do
    redis.call("ZREM", scheduled_key(queue), id)
    redis.call("HSET", jkey(id), "state", "queued")
    make_ready(id, queue, redis.call("HGET", jkey(id), "priority"))
  end
end

local ids, queues = {}, {}
if nq == 1 then
  local popped = redis.call("ZPOPMIN", ready_key(ARGV[5]), limit)
  for i = 1, #popped, 2 do
    ids[#ids + 1] = popped[i]
    queues[#queues + 1] = ARGV[5]
  end
else
  -- Several queues: take the lowest score across them, one job at a time.
  while #ids < limit do
    local best_queue, best_id, best_score = nil, nil, nil
    for i = 1, nq do
      local head = redis.call("ZRANGE", ready_key(ARGV[4 + i]), 0, 0, "WITHSCORES")
      if head[1] and (best_score == nil or tonumber(head[2]) < best_score) then
        best_queue, best_id, best_score = ARGV[4 + i], head[1], tonumber(head[2])
      end
    end
    if not best_queue then break end
    redis.call("ZREM", ready_key(best_queue), best_id)
    ids[#ids + 1] = best_id
    queues[#queues + 1] = best_queue
  end
end

local out = {}
local until_ = now + lease
for i, id in ipairs(ids) do
  local key = jkey(id)
  redis.call("HINCRBY", key, "attempts", 1)
  redis.call("HSET", key, "state", "running", "started_at", ARGV[2], "lease_until", until_,
    "cancel_requested", 0)
  redis.call("ZADD", running_key(queues[i]), until_, id)
  out[#out + 1] = record(id)
end
return out
