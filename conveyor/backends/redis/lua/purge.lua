-- ARGV: prefix, older_than ("" = any), queue ("" = all), limit, states...
-- Deletes up to `limit` jobs; returns how many (call again until fewer).
-- A final state's index is scored by finished_at: what is old enough is
-- read by score, `limit` at most, so a slice costs what it deletes however
-- big the index (a scan of every member per slice blocked Redis for half a
-- second at 240,000 completed jobs). Queued and scheduled jobs are told old
-- by created_at, which no index orders: those are looked at one by one.
local older_than, only_queue, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local removed = 0
local FINAL = {completed = true, failed = true, cancelled = true}
for _, queue in ipairs(redis.call("SMEMBERS", P .. ":queues")) do
  if only_queue == "" or queue == only_queue then
    for i = 5, #ARGV do
      local state = ARGV[i]
      for _, set in ipairs(index_keys(queue, state)) do
        if removed >= limit then return removed end
        if FINAL[state] then
          local ids
          if older_than == "" then
            ids = redis.call("ZRANGE", set, 0, limit - removed - 1)
          else
            ids = redis.call("ZRANGEBYSCORE", set, "-inf", "(" .. older_than,
              "LIMIT", 0, limit - removed)
          end
          for _, id in ipairs(ids) do
            redis.call("ZREM", set, id)
            if redis.call("EXISTS", jkey(id)) == 1 then
              delete_job(id)
              removed = removed + 1
            end
          end
        else
          for _, id in ipairs(redis.call("ZRANGE", set, 0, -1)) do
            if removed >= limit then return removed end
            local stamp = redis.call("HGET", jkey(id), "created_at")
            if not stamp then
              redis.call("ZREM", set, id) -- a stale index entry
            elseif older_than == "" or (stamp ~= "" and tonumber(stamp) < tonumber(older_than)) then
              redis.call("ZREM", set, id) -- (a legacy set is not the job's index_key)
              delete_job(id)
              removed = removed + 1
            end
          end
        end
      end
    end
  end
end
return removed
