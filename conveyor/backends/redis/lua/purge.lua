-- ARGV: prefix, older_than ("" = any), queue ("" = all), limit, states...
-- Deletes up to `limit` jobs; returns how many (call again until fewer).
local older_than, only_queue, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local removed = 0
for _, queue in ipairs(redis.call("SMEMBERS", P .. ":queues")) do
  if only_queue == "" or queue == only_queue then
    for i = 5, #ARGV do
      local state = ARGV[i]
      local field = "finished_at"
      if state == "queued" or state == "scheduled" then field = "created_at" end
      for _, set in ipairs(index_keys(queue, state)) do
        for _, id in ipairs(redis.call("ZRANGE", set, 0, -1)) do
          if removed >= limit then return removed end
          local stamp = redis.call("HGET", jkey(id), field)
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
return removed
