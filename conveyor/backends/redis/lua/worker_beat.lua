-- ARGV: prefix, worker id, info (JSON), ttl, now ("" = the server's), kept.
-- Records a live worker until now + ttl and forgets those whose records
-- expired more than `kept` seconds ago (a killed worker says no goodbye; its
-- record is shown as stale meanwhile).
local infos, expiry = P .. ":workers", P .. ":workers:expires"
local now = tonumber(now_or_server(ARGV[5]))
local gone = redis.call("ZRANGEBYSCORE", expiry, "-inf", string.format("%.17g", now - tonumber(ARGV[6])))
if #gone > 0 then
  redis.call("HDEL", infos, unpack(gone))
  redis.call("ZREM", expiry, unpack(gone))
end
redis.call("HSET", infos, ARGV[2], ARGV[3])
redis.call("ZADD", expiry, string.format("%.17g", now + tonumber(ARGV[4])), ARGV[2])
return 1
