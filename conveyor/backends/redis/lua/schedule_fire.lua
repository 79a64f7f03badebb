-- ARGV: prefix, now ("" = the server's), name, expected_next_run, next_run,
-- last_run ("" = keep), last_error ("" = none), jobs (JSON).
-- Compare-and-set on next_run, then enqueue the tick's jobs in the same step.
-- Returns false (another scheduler fired the tick) or {now, insert's reply}.
local skey = P .. ":schedule:" .. ARGV[3]
local h = redis.call("HMGET", skey, "enabled", "next_run")
if h[1] ~= "1" or h[2] ~= ARGV[4] then return false end
redis.call("HSET", skey, "next_run", ARGV[5], "last_error", ARGV[7])
if ARGV[6] ~= "" then redis.call("HSET", skey, "last_run", ARGV[6]) end
redis.call("ZADD", P .. ":schedules:due", ARGV[5], ARGV[3])
local now_text = now_or_server(ARGV[2])
return {now_text, insert(cjson.decode(ARGV[8]), now_text)}
