-- ARGV: prefix. Returns {queue, job name, queued jobs}* for every non-empty
-- per-name queued set (jobs still in a legacy per-queue set are not named).
local out = {}
for _, queue in ipairs(redis.call("SMEMBERS", P .. ":queues")) do
  for _, name in ipairs(redis.call("SMEMBERS", names_key(queue))) do
    local n = redis.call("ZCARD", queued_key(queue, name))
    if n > 0 then out[#out + 1] = {queue, name, n} end
  end
end
return out
