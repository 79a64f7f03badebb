-- Shared by every script (prepended to each). ARGV[1] is the key prefix,
-- a hash tag such as "{conveyor}", so every key of a deployment lives in one
-- slot and each script touches one slot, on a single Redis or a Cluster.
-- Batches arrive as one JSON argument (cheaper to pack than many arguments);
-- timestamps travel as text so they keep every digit.
local P = ARGV[1]
local FIELDS = {"name", "queue", "payload", "state", "attempts", "max_retries", "priority",
  "key", "result", "error", "progress", "created_at", "run_at", "started_at", "finished_at",
  "timeout", "logs", "stalls", "cancel_requested"}
local PRIORITY_SPAN = 1099511627776 -- 2^40: a ready score is priority * 2^40 + sequence

local function jkey(id) return P .. ":job:" .. id end
local function ready_key(queue) return P .. ":ready:" .. queue end
local function scheduled_key(queue) return P .. ":scheduled:" .. queue end
local function running_key(queue) return P .. ":running:" .. queue end
local function done_key(queue, state) return P .. ":done:" .. queue .. ":" .. state end

-- The index a job sits in while in `state`; its membership is the state count.
local function index_key(queue, state)
  if state == "queued" then return ready_key(queue) end
  if state == "scheduled" then return scheduled_key(queue) end
  if state == "running" then return running_key(queue) end
  return done_key(queue, state)
end

local function next_seq() return redis.call("INCR", P .. ":seq") end

local function wake(queue, n)
  local key = P .. ":wake:" .. queue
  local tokens = {}
  for i = 1, math.min(n, 16) do tokens[i] = "1" end
  redis.call("LPUSH", key, unpack(tokens))
  redis.call("LTRIM", key, 0, 63)
end

-- Scores go to Redis as "%.0f" text: a Lua number would be sent with 14
-- significant digits and lose the sequence part of large scores.
local function ready_score(priority, seq)
  return string.format("%.0f", tonumber(priority) * PRIORITY_SPAN + seq)
end

local function make_ready(id, queue, priority)
  redis.call("ZADD", ready_key(queue), ready_score(priority, next_seq()), id)
end

local function record(id)
  local values = redis.call("HMGET", jkey(id), unpack(FIELDS))
  table.insert(values, 1, id)
  return values
end

-- Append a JSON array of log lines to the job's JSON array text.
local function append_logs(key, items)
  if items == "" or items == "[]" then return end
  local current = redis.call("HGET", key, "logs")
  if not current or current == "" or current == "[]" then
    redis.call("HSET", key, "logs", items)
  else
    redis.call("HSET", key, "logs", string.sub(current, 1, -2) .. "," .. string.sub(items, 2))
  end
end

local function delete_job(id)
  local key = jkey(id)
  local h = redis.call("HMGET", key, "queue", "state", "key")
  if not h[1] then return end
  if h[3] and h[3] ~= "" and redis.call("HGET", P .. ":keys", h[3]) == id then
    redis.call("HDEL", P .. ":keys", h[3])
  end
  redis.call("ZREM", index_key(h[1], h[2]), id)
  redis.call("DEL", key)
end

-- Move a job from `from_state` (its index entry already removed) into a final
-- state; trim what `keep` (a number, or "" for all) no longer keeps.
local function finalize(id, queue, state, at, keep, fields)
  redis.call("HSET", jkey(id), "state", state, "finished_at", at, unpack(fields))
  local done = done_key(queue, state)
  redis.call("ZADD", done, next_seq(), id)
  if keep ~= "" then
    local extra = redis.call("ZCARD", done) - tonumber(keep)
    if extra > 0 then
      for _, old_id in ipairs(redis.call("ZRANGE", done, 0, extra - 1)) do delete_job(old_id) end
    end
  end
end

-- Store jobs [[id, name, queue, payload, priority, max_retries, timeout, key,
-- created_at, run_at], ...]. Returns {id, duplicate (0/1)} per job.
local function insert(jobs, now)
  local out = {}
  local woken = {}
  for _, j in ipairs(jobs) do
    local id, queue, priority, ukey, run_at = j[1], j[3], j[5], j[8], j[10]
    local existing = false
    if ukey ~= "" then existing = redis.call("HGET", P .. ":keys", ukey) end
    if existing then
      out[#out + 1] = existing
      out[#out + 1] = 1
    else
      local state = "queued"
      if tonumber(run_at) > now then state = "scheduled" end
      redis.call("HSET", jkey(id), "name", j[2], "queue", queue, "payload", j[4],
        "state", state, "priority", priority, "max_retries", j[6], "timeout", j[7],
        "key", ukey, "created_at", j[9], "run_at", run_at, "attempts", 0, "progress", 0,
        "stalls", 0, "cancel_requested", 0)
      if ukey ~= "" then redis.call("HSET", P .. ":keys", ukey, id) end
      if state == "queued" then
        make_ready(id, queue, priority)
        woken[queue] = (woken[queue] or 0) + 1
      else
        redis.call("ZADD", scheduled_key(queue), run_at, id)
      end
      redis.call("SADD", P .. ":queues", queue)
      out[#out + 1] = id
      out[#out + 1] = 0
    end
  end
  for queue, n_ready in pairs(woken) do wake(queue, n_ready) end
  return out
end
