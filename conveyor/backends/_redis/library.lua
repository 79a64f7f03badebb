-- Shared by every script (prepended to each). ARGV[1] is the key prefix,
-- a hash tag such as "{conveyor}", so every key of a deployment lives in one
-- slot and each script touches one slot, on a single Redis or a Cluster.
local P = ARGV[1]
local FIELDS = {"name", "queue", "payload", "state", "attempts", "max_retries", "priority",
  "key", "result", "error", "progress", "created_at", "run_at", "started_at", "finished_at",
  "timeout", "logs", "stalls", "cancel_requested"}
local PRIORITY_SPAN = 1099511627776 -- 2^40: a ready score is priority * 2^40 + sequence

local function jkey(id) return P .. ":job:" .. id end
local function ready_key(queue) return P .. ":ready:" .. queue end
local function done_key(queue, state) return P .. ":done:" .. queue .. ":" .. state end

local function count(queue, state, delta)
  redis.call("HINCRBY", P .. ":counts", queue .. "|" .. state, delta)
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
  if h[2] == "queued" then
    redis.call("ZREM", ready_key(h[1]), id)
  elseif h[2] == "scheduled" then
    redis.call("ZREM", P .. ":scheduled", id)
  elseif h[2] == "running" then
    redis.call("ZREM", P .. ":running", id)
  else
    redis.call("ZREM", done_key(h[1], h[2]), id)
  end
  redis.call("ZREM", P .. ":all", id)
  redis.call("DEL", key)
  count(h[1], h[2], -1)
end

-- Move a job into a final state; trim what `keep` (a number or "") no longer keeps.
local function finalize(id, queue, from_state, state, at, keep)
  redis.call("HSET", jkey(id), "state", state, "finished_at", at)
  count(queue, from_state, -1)
  count(queue, state, 1)
  local done = done_key(queue, state)
  redis.call("ZADD", done, string.format("%.0f", next_seq()), id)
  if keep ~= "" then
    local extra = redis.call("ZCARD", done) - tonumber(keep)
    if extra > 0 then
      local old = redis.call("ZRANGE", done, 0, extra - 1)
      for _, old_id in ipairs(old) do delete_job(old_id) end
    end
  end
end

-- Store jobs; ARGV from `base` on holds 10 values per job. Returns {id, duplicate}*.
local function insert(base, n, now)
  local out = {}
  local woken = {}
  for i = 0, n - 1 do
    local a = base + i * 10
    local id, name, queue, payload = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
    local priority, max_retries, timeout, ukey = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
    local created_at, run_at = ARGV[a + 8], ARGV[a + 9]
    local existing = false
    if ukey ~= "" then existing = redis.call("HGET", P .. ":keys", ukey) end
    if existing then
      out[#out + 1] = existing
      out[#out + 1] = 1
    else
      local state = "queued"
      if tonumber(run_at) > now then state = "scheduled" end
      local seq = next_seq()
      redis.call("HSET", jkey(id), "name", name, "queue", queue, "payload", payload,
        "state", state, "priority", priority, "max_retries", max_retries, "timeout", timeout,
        "key", ukey, "created_at", created_at, "run_at", run_at, "attempts", 0, "progress", 0,
        "stalls", 0, "cancel_requested", 0, "seq", seq)
      if ukey ~= "" then redis.call("HSET", P .. ":keys", ukey, id) end
      if state == "queued" then
        redis.call("ZADD", ready_key(queue), ready_score(priority, seq), id)
        woken[queue] = (woken[queue] or 0) + 1
      else
        redis.call("ZADD", P .. ":scheduled", run_at, id)
      end
      redis.call("ZADD", P .. ":all", seq, id)
      count(queue, state, 1)
      redis.call("SADD", P .. ":queues", queue)
      out[#out + 1] = id
      out[#out + 1] = 0
    end
  end
  for queue, n_ready in pairs(woken) do wake(queue, n_ready) end
  return out
end
