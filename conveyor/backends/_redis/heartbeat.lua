-- ARGV: prefix, now, lease, n, then (id, token, logs JSON array or "") per beat
-- Returns per beat: 0 lost, 1 held, 2 held and cancel requested.
local now, lease, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 0, n - 1 do
  local id, token, logs = ARGV[5 + i * 3], tonumber(ARGV[6 + i * 3]), ARGV[7 + i * 3]
  local key = jkey(id)
  local h = redis.call("HMGET", key, "state", "attempts", "lease_until", "cancel_requested")
  if h[1] ~= "running" or tonumber(h[2]) ~= token or tonumber(h[3]) < now then
    out[#out + 1] = 0
  else
    redis.call("HSET", key, "lease_until", now + lease)
    redis.call("ZADD", P .. ":running", now + lease, id)
    append_logs(key, logs)
    if h[4] == "1" then out[#out + 1] = 2 else out[#out + 1] = 1 end
  end
end
return out
