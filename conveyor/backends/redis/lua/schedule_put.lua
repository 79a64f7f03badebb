-- ARGV: prefix, name, "1" to compare first | "0", expected next_run (text,
-- as stored), expected enabled ("1" | "0"), enabled, next_run, then the
-- schedule hash's field/value pairs.
-- Creates or replaces the schedule; with the comparison, only while it still
-- exists with the next run and enabled read before (a fire, enable, disable
-- or delete since changed that). Returns 1 if written, else 0.
local skey = P .. ":schedule:" .. ARGV[2]
if ARGV[3] == "1" then
  local h = redis.call("HMGET", skey, "enabled", "next_run")
  if not h[2] or tonumber(h[2]) ~= tonumber(ARGV[4]) or h[1] ~= ARGV[5] then return 0 end
end
redis.call("DEL", skey)
redis.call("HSET", skey, unpack(ARGV, 8))
redis.call("SADD", P .. ":schedules", ARGV[2])
if ARGV[6] == "1" then
  redis.call("ZADD", P .. ":schedules:due", ARGV[7], ARGV[2])
else
  redis.call("ZREM", P .. ":schedules:due", ARGV[2])
end
return 1
