-- ARGV: prefix, now ("" = the server's), lease, beats (JSON [[id, token, logs JSON or ""], ...])
-- Returns per beat: 0 lost, 1 held, 2 held and cancel requested.
local now, lease = tonumber(now_or_server(ARGV[2])), tonumber(ARGV[3])
local out = {}
for _, beat in ipairs(cjson.decode(ARGV[4])) do
  local key = jkey(beat[1])
  local h = redis.call("HMGET", key, "state", "token", "lease_until", "cancel_requested", "queue")
  if h[1] ~= "running" or h[2] ~= beat[2] or tonumber(h[3]) < now then
    out[#out + 1] = 0
  else
    redis.call("HSET", key, "lease_until", now + lease)
    redis.call("ZADD", running_key(h[5]), now + lease, beat[1])
    append_logs(key, beat[3])
    if h[4] == "1" then out[#out + 1] = 2 else out[#out + 1] = 1 end
  end
end
return out
