-- ARGV: prefix, claim id, now ("" = the server's). Hands back every job still
-- running under this claim (its reply was lost): attempt not counted, no
-- stall. Returns how many.
-- Claims are not indexed (that would cost every claim a write for a rare
-- call): the running indexes hold only leased jobs, bounded by the workers'
-- concurrency, and this runs once per lost reply.
local claim_id, now = ARGV[2], now_or_server(ARGV[3])
local batch = batch_new()
local count = 0
for _, queue in ipairs(redis.call("SMEMBERS", P .. ":queues")) do
  local running = running_key(queue)
  for _, id in ipairs(redis.call("ZRANGE", running, 0, -1)) do
    local h = redis.call("HMGET", jkey(id), "state", "token", "priority", "cancel_requested")
    if h[1] == "running" and h[2] == claim_id then
      batch_remove(batch, running, id)
      hand_back(batch, id, queue, h[3], h[4], now)
      count = count + 1
    end
  end
end
batch_apply(batch)
return count
