-- ARGV: prefix, now ("" = the server's), lease, token, ids (JSON array).
-- A broker's store (base.DeliveryStore.claim_ids): lease each listed job
-- that is queued, whatever its name or priority, as a claim does. Returns one
-- entry per id, in order: the job's record, or false (nil in the reply) when
-- it is missing, not queued, or listed before.
local now_text = now_or_server(ARGV[2])
local ids = cjson.decode(ARGV[5])
local taken, queues, place = {}, {}, {}
for i, id in ipairs(ids) do
  local h = redis.call("HMGET", jkey(id), "state", "queue", "name")
  -- The state is read before any job is leased: `place` keeps a repeated id out.
  if h[1] == "queued" and not place[id] then
    local queue, name = h[2], h[3]
    local ready = queued_key(queue, name)
    if redis.call("ZREM", ready, id) == 0 then
      redis.call("ZREM", legacy_ready_key(queue), id) -- queued by an older release
    elseif redis.call("ZCARD", ready) == 0 then
      -- Emptied: its name leaves the queue's directory until a job comes (as in a claim).
      redis.call("SREM", names_key(queue), name)
    end
    taken[#taken + 1], queues[#queues + 1], place[id] = id, queue, i
  end
end
local leased = lease_jobs(taken, queues, now_text, tonumber(ARGV[3]), ARGV[4])
local out = {}
for i = 1, #ids do out[i] = false end
for k, id in ipairs(taken) do out[place[id]] = leased[k] end
return out
