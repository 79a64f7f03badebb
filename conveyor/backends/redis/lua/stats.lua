-- ARGV: prefix. Returns {queue, scheduled, queued, running, completed, failed, cancelled}*.
local out = {}
for _, queue in ipairs(redis.call("SMEMBERS", P .. ":queues")) do
  out[#out + 1] = {queue, redis.call("ZCARD", scheduled_key(queue)),
    queued_count(queue), redis.call("ZCARD", running_key(queue)),
    redis.call("ZCARD", done_key(queue, "completed")), redis.call("ZCARD", done_key(queue, "failed")),
    redis.call("ZCARD", done_key(queue, "cancelled"))}
end
return out
