-- ARGV: prefix, worker id, info (JSON), expires, now. Records a live worker
-- and forgets those whose records expired (a killed worker says no goodbye).
local infos, expiry = P .. ":workers", P .. ":workers:expires"
local gone = redis.call("ZRANGEBYSCORE", expiry, "-inf", ARGV[5])
if #gone > 0 then
  redis.call("HDEL", infos, unpack(gone))
  redis.call("ZREM", expiry, unpack(gone))
end
redis.call("HSET", infos, ARGV[2], ARGV[3])
redis.call("ZADD", expiry, ARGV[4], ARGV[2])
return 1
