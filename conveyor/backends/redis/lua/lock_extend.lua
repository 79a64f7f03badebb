-- ARGV: prefix, key, token, ttl_ms. Compare-and-extend.
local key = P .. ":lock:" .. ARGV[2]
if redis.call("GET", key) == ARGV[3] then return redis.call("PEXPIRE", key, ARGV[4]) end
return 0
