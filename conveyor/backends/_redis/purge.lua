-- ARGV: prefix, older_than ("" = any), queue ("" = all), limit, states...
-- Deletes up to `limit` jobs; returns how many (call again until 0).
local older_than, only_queue, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local removed = 0
local queues = redis.call("SMEMBERS", P .. ":queues")
local function old_enough(id, field)
  if older_than == "" then return true end
  local stamp = redis.call("HGET", jkey(id), field)
  return stamp and stamp ~= "" and tonumber(stamp) < tonumber(older_than)
end
for i = 5, #ARGV do
  local state = ARGV[i]
  local sets = {}
  if state == "scheduled" then
    sets[1] = P .. ":scheduled"
  else
    for _, queue in ipairs(queues) do
      if only_queue == "" or queue == only_queue then
        if state == "queued" then sets[#sets + 1] = ready_key(queue)
        else sets[#sets + 1] = done_key(queue, state) end
      end
    end
  end
  local stamp_field = "finished_at"
  if state == "queued" or state == "scheduled" then stamp_field = "created_at" end
  for _, set in ipairs(sets) do
    local ids = redis.call("ZRANGE", set, 0, -1)
    for _, id in ipairs(ids) do
      if removed >= limit then return removed end
      local h = redis.call("HMGET", jkey(id), "state", "queue")
      if h[1] == state and (only_queue == "" or h[2] == only_queue) and old_enough(id, stamp_field) then
        delete_job(id)
        removed = removed + 1
      elseif not h[1] then
        redis.call("ZREM", set, id) -- a stale index entry
      end
    end
  end
end
return removed
