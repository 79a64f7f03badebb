-- ARGV: prefix, id, token, progress ("" = unchanged), logs. Returns 1 if held.
local key = jkey(ARGV[2])
local h = redis.call("HMGET", key, "state", "token")
if h[1] ~= "running" or h[2] ~= ARGV[3] then return 0 end
if ARGV[4] ~= "" then redis.call("HSET", key, "progress", ARGV[4]) end
append_logs(key, ARGV[5])
return 1
