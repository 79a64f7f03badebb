-- ARGV: prefix, id, now ("" = the server's). Returns cancelled | requested | final | not_found.
local id = ARGV[2]
local key = jkey(id)
local h = redis.call("HMGET", key, "state", "queue", "name")
if not h[1] then return "not_found" end
local state = h[1]
if state == "completed" or state == "failed" or state == "cancelled" then return "final" end
if state == "running" then
  redis.call("HSET", key, "cancel_requested", 1)
  return "requested"
end
redis.call("ZREM", index_key(h[2], state, h[3]), id)
local batch = batch_new()
finalize(batch, id, h[2], "cancelled", now_or_server(ARGV[3]), "", {"error", "cancelled"})
batch_apply(batch)
return "cancelled"
