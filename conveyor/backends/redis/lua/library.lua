-- Shared by every script (prepended to each). ARGV[1] is the key prefix,
-- a hash tag such as "{conveyor}", so every key of a deployment lives in one
-- slot and each script touches one slot, on a single Redis or a Cluster.
-- Batches arrive as one JSON argument (cheaper to pack than many arguments);
-- timestamps travel as text so they keep every digit.
local P = ARGV[1]
local FIELDS = {"name", "queue", "payload", "state", "attempts", "max_retries", "priority",
  "key", "result", "error", "progress", "created_at", "run_at", "started_at", "finished_at",
  "timeout", "logs", "stalls", "cancel_requested", "traceback", "history", "headers"}
-- job.py's HISTORY_LIMIT: the attempts a job's history keeps.
local HISTORY_LIMIT = 20
-- A ready score orders by priority, then due time in milliseconds since
-- 2025-01-01; equal scores fall back to the member, the job id, which sorts by
-- creation time. priority * 2^42 + ms stays exact in a double (below 2^53)
-- for priorities -1000..1000 and 139 years of milliseconds.
local PRIORITY_SPAN = 4398046511104 -- 2^42
local EPOCH_MS = 1735689600000

-- The server's clock, as text keeping every digit: the one clock this
-- backend decides leases, due times and expiries by. A caller's `now` of ""
-- asks for it; any other `now` is used as given (tests drive time that way).
local function server_time()
  local t = redis.call("TIME")
  return t[1] .. "." .. string.format("%06d", tonumber(t[2]))
end

local function now_or_server(now_text)
  if now_text == "" then return server_time() end
  return now_text
end

local function jkey(id) return P .. ":job:" .. id end
-- Queued jobs wait in one set per (queue, job name), so a claim reads only
-- the names its worker serves. The byte length of the queue name up front
-- keeps "a:b" + "c" apart from "a" + "b:c".
local function pair(queue, name) return #queue .. ":" .. queue .. ":" .. name end
local function queued_key(queue, name) return P .. ":queued:" .. pair(queue, name) end
local function names_key(queue) return P .. ":names:" .. queue end
local function legacy_ready_key(queue) return P .. ":ready:" .. queue end
local function scheduled_key(queue) return P .. ":scheduled:" .. queue end
local function running_key(queue) return P .. ":running:" .. queue end
local function done_key(queue, state) return P .. ":done:" .. queue .. ":" .. state end

-- The index a job sits in while in `state`; its membership is the state count.
local function index_key(queue, state, name)
  if state == "queued" then return queued_key(queue, name) end
  if state == "scheduled" then return scheduled_key(queue) end
  if state == "running" then return running_key(queue) end
  return done_key(queue, state)
end

-- Every index of `state` in `queue`: for queued jobs, one per job name (and
-- the set of the layout before per-name sets, until claims have emptied it).
local function index_keys(queue, state)
  if state ~= "queued" then return {index_key(queue, state)} end
  local keys = {legacy_ready_key(queue)}
  for _, name in ipairs(redis.call("SMEMBERS", names_key(queue))) do
    keys[#keys + 1] = queued_key(queue, name)
  end
  return keys
end

local function queued_count(queue)
  local n = 0
  for _, key in ipairs(index_keys(queue, "queued")) do n = n + redis.call("ZCARD", key) end
  return n
end

-- Wake-up tokens per (queue, job name): only workers serving that name wait
-- on its list, so a job nobody here can run wakes nobody in vain.
local function wake(queue, name, n)
  local key = P .. ":wakeup:" .. pair(queue, name)
  local tokens = {}
  for i = 1, math.min(n, 16) do tokens[i] = "1" end
  redis.call("LPUSH", key, unpack(tokens))
  redis.call("LTRIM", key, 0, 63)
end

-- Scores go to Redis as "%.0f" text: a Lua number would be sent with 14
-- significant digits and lose the low digits of large scores.
local function ready_score(priority, run_at)
  local ms = math.floor(tonumber(run_at) * 1000) - EPOCH_MS
  return string.format("%.0f", tonumber(priority) * PRIORITY_SPAN + ms)
end

-- Returns the job's name (read from its hash unless given).
local function make_ready(id, queue, priority, run_at, name)
  name = name or redis.call("HGET", jkey(id), "name")
  redis.call("ZADD", queued_key(queue, name), ready_score(priority, run_at), id)
  redis.call("SADD", names_key(queue), name)
  return name
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

-- End the job's current attempt in its history (a JSON array of entries in
-- records.py's stored_entry form), read before the attempt count or start
-- time change. Times are the stored text, so they keep every digit. Every
-- entry begins with {"attempt": and inside an encoded error string the quote
-- would be escaped, so '},{"attempt":' only ever marks an entry boundary:
-- the oldest entry is cut there without decoding the array.
local function end_attempt(key, outcome, at, err)
  local h = redis.call("HMGET", key, "attempts", "started_at", "history")
  local started = h[2]
  if not started or started == "" then started = "null" end
  local err_json = "null"
  if err and err ~= "" then err_json = cjson.encode(err) end
  local entry = '{"attempt":' .. (h[1] or "0") .. ',"started_at":' .. started
    .. ',"finished_at":' .. at .. ',"outcome":"' .. outcome .. '","error":' .. err_json .. "}"
  local current = h[3]
  if not current or current == "" or current == "[]" then
    current = "[" .. entry .. "]"
  else
    local _, n = string.gsub(current, '{"attempt":', "")
    if n >= HISTORY_LIMIT then
      local cut = string.find(current, '},{"attempt":', 1, true)
      current = "[" .. string.sub(current, cut + 2)
    end
    current = string.sub(current, 1, -2) .. "," .. entry .. "]"
  end
  redis.call("HSET", key, "history", current)
end

local function delete_job(id)
  local key = jkey(id)
  local h = redis.call("HMGET", key, "queue", "state", "key", "name")
  if not h[1] then return end
  if h[3] and h[3] ~= "" then
    if redis.call("HGET", P .. ":keys", h[3]) == id then redis.call("HDEL", P .. ":keys", h[3]) end
    redis.call("HDEL", P .. ":keyof", id)
  end
  redis.call("ZREM", index_key(h[1], h[2], h[4]), id)
  redis.call("DEL", key)
end

-- Per-batch collections of index writes, applied once per key at the end:
-- one ZADD / ZREM with many members costs far less than one call per job.
local function batch_new() return {adds = {}, removes = {}, trims = {}} end

local function batch_add(batch, key, score, id)
  local list = batch.adds[key]
  if not list then list = {}; batch.adds[key] = list end
  list[#list + 1] = score
  list[#list + 1] = id
end

local function batch_remove(batch, key, id)
  local list = batch.removes[key]
  if not list then list = {}; batch.removes[key] = list end
  list[#list + 1] = id
end

local function in_chunks(list, step, fn)
  for i = 1, #list, step do fn(unpack(list, i, math.min(i + step - 1, #list))) end
end

-- Delete the oldest entries of a done set beyond `keep`, with their jobs
-- (at most 1,000 per call: a lowered limit converges over the next batches
-- instead of stalling Redis).
local function trim(done, keep)
  local extra = math.min(redis.call("ZCARD", done) - keep, 1000)
  if extra <= 0 then return end
  local old = redis.call("ZRANGE", done, 0, extra - 1)
  local job_keys = {}
  for i, id in ipairs(old) do job_keys[i] = jkey(id) end
  -- Only jobs with an idempotency key are in P:keyof: one call for the batch.
  local ukeys = redis.call("HMGET", P .. ":keyof", unpack(old))
  local idem_keys = {}
  for i, ukey in ipairs(ukeys) do
    if ukey and redis.call("HGET", P .. ":keys", ukey) == old[i] then
      idem_keys[#idem_keys + 1] = ukey
    end
  end
  redis.call("ZREMRANGEBYRANK", done, 0, extra - 1)
  redis.call("DEL", unpack(job_keys))
  redis.call("HDEL", P .. ":keyof", unpack(old))
  if #idem_keys > 0 then redis.call("HDEL", P .. ":keys", unpack(idem_keys)) end
end

local function batch_apply(batch)
  for key, list in pairs(batch.removes) do
    in_chunks(list, 1000, function(...) redis.call("ZREM", key, ...) end)
  end
  for key, list in pairs(batch.adds) do
    in_chunks(list, 1000, function(...) redis.call("ZADD", key, ...) end)
  end
  for done, keep in pairs(batch.trims) do trim(done, keep) end
end

-- Move a job (already out of its previous index) into a final state, keeping
-- at most `keep` (a number, or "" for all) of that state in its queue.
--
-- Wherever a job stops running its claim token is cleared: every claim made
-- by this code sets a new one, but a worker still running older scripts
-- (a rolling deploy) claims without touching it, and a stale token left in
-- place would then match that claim.
local function finalize(batch, id, queue, state, at, keep, fields)
  redis.call("HSET", jkey(id), "state", state, "finished_at", at, "token", "", unpack(fields))
  local done = done_key(queue, state)
  batch_add(batch, done, at, id)
  if keep ~= "" then batch.trims[done] = tonumber(keep) end
end

-- Store jobs [[id, name, queue, payload, priority, max_retries, timeout, key,
-- created_at, run_at, relative ("1" or "")], ...] at `now_text`. Returns
-- per job its id, then 0 (stored now) or the record of the job holding its
-- key (a duplicate).
local function insert(jobs, now_text)
  local now = tonumber(now_text)
  local out = {}
  local woken = {}
  for _, j in ipairs(jobs) do
    local id, queue, priority, ukey = j[1], j[3], j[5], j[8]
    local created_at, run_at = j[9], j[10]
    if j[11] == "1" then
      -- A delay the producer asked for counts from this clock, not from the
      -- producer's (rows.py's new_job_record computes the same, digit for digit).
      local delay = tonumber(run_at) - tonumber(created_at)
      created_at = now_text
      if delay > 0 then run_at = string.format("%.17g", now + delay) else run_at = now_text end
    end
    local existing = false
    if ukey ~= "" then existing = redis.call("HGET", P .. ":keys", ukey) end
    if existing then
      -- Its record, read here: a second round trip could find it finished
      -- and dropped by retention meanwhile.
      out[#out + 1] = existing
      out[#out + 1] = record(existing)
    else
      local state = "queued"
      if tonumber(run_at) > now then state = "scheduled" end
      redis.call("HSET", jkey(id), "name", j[2], "queue", queue, "payload", j[4],
        "state", state, "priority", priority, "max_retries", j[6], "timeout", j[7],
        "key", ukey, "created_at", created_at, "run_at", run_at, "attempts", 0, "progress", 0,
        "stalls", 0, "cancel_requested", 0, "headers", j[12])
      if ukey ~= "" then
        redis.call("HSET", P .. ":keys", ukey, id)
        redis.call("HSET", P .. ":keyof", id, ukey)
      end
      if state == "queued" then
        make_ready(id, queue, priority, run_at, j[2])
        local by_name = woken[queue] or {}
        woken[queue] = by_name
        by_name[j[2]] = (by_name[j[2]] or 0) + 1
      else
        redis.call("ZADD", scheduled_key(queue), run_at, id)
      end
      redis.call("SADD", P .. ":queues", queue)
      out[#out + 1] = id
      out[#out + 1] = 0
    end
  end
  for queue, by_name in pairs(woken) do
    for name, n_ready in pairs(by_name) do wake(queue, name, n_ready) end
  end
  return out
end

-- Hand a running job (already out of its running index) back to the queue
-- at `at` with its attempt uncounted, as if it had never been claimed; a
-- cancel-requested one ends cancelled instead.
local function hand_back(batch, id, queue, priority, cancel_requested, at)
  if cancel_requested == "1" then
    end_attempt(jkey(id), "cancelled", at, "")
    finalize(batch, id, queue, "cancelled", at, "", {"error", "cancelled"})
    return
  end
  local key = jkey(id)
  end_attempt(key, "handed back", at, "")
  redis.call("HINCRBY", key, "attempts", -1)
  redis.call("HSET", key, "state", "queued", "started_at", "", "run_at", at, "token", "")
  wake(queue, make_ready(id, queue, priority, at), 1)
end

-- How the history names an attempt that ended with an outcome of `kind`
-- (records.py's attempt_outcome).
local ATTEMPT_OUTCOME = {completed = "completed", failed = "failed", scheduled = "retrying",
  cancelled = "cancelled"}

-- Apply outcomes [[id, token, kind, at, result, error, run_at, logs, progress,
-- retry_in, traceback, timed_out ("1" or "")]] of claims; returns 1/0 per
-- outcome: 0 when the token no longer holds the job.
local function finish_jobs(keep_completed, keep_failed, outcomes)
  local keep = {completed = keep_completed, failed = keep_failed, cancelled = ""}
  local batch = batch_new()
  local out = {}
  local now_text = nil -- the server's clock, read once if a retry needs it
  for _, o in ipairs(cjson.decode(outcomes)) do
    local id, kind, at, result, err, run_at = o[1], o[3], o[4], o[5], o[6], o[7]
    local key = jkey(id)
    local h = redis.call("HMGET", key, "state", "token", "queue", "priority", "cancel_requested")
    if h[1] ~= "running" or h[2] ~= o[2] then
      out[#out + 1] = 0
    else
      out[#out + 1] = 1
      local queue = h[3]
      batch_remove(batch, running_key(queue), id)
      append_logs(key, o[8])
      if o[9] ~= "" then redis.call("HSET", key, "progress", o[9]) end
      if h[5] == "1" and (kind == "queued" or kind == "scheduled") then
        kind = "cancelled" -- a cancel outlives the attempt
        if err == "" then err = "cancelled" end
      end
      if kind ~= "queued" then
        local ended = ATTEMPT_OUTCOME[kind]
        if o[12] == "1" and (kind == "failed" or kind == "scheduled") then ended = "timed out" end
        if kind == "completed" then
          end_attempt(key, ended, at, "")
        else
          end_attempt(key, ended, at, err)
        end
      end
      if kind == "queued" then
        hand_back(batch, id, queue, h[4], "0", at)
      elseif kind == "scheduled" then
        local since = at -- the caller's clock, for a run_at of its own
        if o[10] ~= "" then
          -- A delay: from the server's clock, whatever the worker's says.
          now_text = now_text or server_time()
          since = now_text
          run_at = string.format("%.17g", tonumber(now_text) + tonumber(o[10]))
        elseif run_at == "" then
          run_at = at
        end
        if tonumber(run_at) > tonumber(since) then
          redis.call("HSET", key, "error", err, "run_at", run_at, "state", "scheduled", "token", "",
            "traceback", o[11])
          batch_add(batch, scheduled_key(queue), run_at, id)
        else
          redis.call("HSET", key, "error", err, "run_at", run_at, "state", "queued", "token", "",
            "traceback", o[11])
          wake(queue, make_ready(id, queue, h[4], run_at), 1)
        end
      elseif kind == "completed" then
        finalize(batch, id, queue, kind, at, keep[kind],
          {"result", result, "error", "", "progress", 100, "traceback", ""})
      elseif kind == "failed" then
        finalize(batch, id, queue, kind, at, keep[kind],
          {"result", result, "error", err, "traceback", o[11]})
      else
        finalize(batch, id, queue, kind, at, keep[kind], {"result", result, "error", err})
      end
    end
  end
  batch_apply(batch)
  return out
end

-- Queued jobs stored before per-name sets (one set per queue) move into
-- them, a slice per claim, so an upgraded deployment needs no migration.
local function adopt_legacy(queue)
  local legacy = legacy_ready_key(queue)
  if redis.call("EXISTS", legacy) == 0 then return end
  local ids = redis.call("ZRANGE", legacy, 0, 999)
  for _, id in ipairs(ids) do
    local h = redis.call("HMGET", jkey(id), "state", "priority", "run_at")
    if h[1] == "queued" then make_ready(id, queue, h[2], h[3]) end
  end
  redis.call("ZREM", legacy, unpack(ids))
end

-- A due scheduled job of `queue` joins its ready set; returns its name.
local function promote(id, queue)
  redis.call("ZREM", scheduled_key(queue), id)
  redis.call("HSET", jkey(id), "state", "queued")
  local job = redis.call("HMGET", jkey(id), "priority", "run_at")
  return make_ready(id, queue, job[1], job[2])
end

-- Lease jobs (queued, already out of their ready sets; queues[i] is the queue
-- of ids[i]) at `now_text` for `lease` seconds under the claim's fencing
-- token. Returns their records, in order.
local function lease_jobs(ids, queues, now_text, lease, token)
  local out = {}
  local batch = batch_new()
  local until_ = string.format("%.6f", tonumber(now_text) + lease)
  for i, id in ipairs(ids) do
    local values = record(id)
    -- record(): {id, name, queue, payload, state, attempts, ...}; patch what changes.
    local attempts = tonumber(values[6]) + 1
    values[5], values[6], values[15], values[20] = "running", tostring(attempts), now_text, "0"
    redis.call("HSET", jkey(id), "state", "running", "attempts", attempts, "started_at", now_text,
      "lease_until", until_, "token", token, "cancel_requested", 0)
    batch_add(batch, running_key(queues[i]), until_, id)
    out[#out + 1] = values
  end
  batch_apply(batch)
  return out
end

-- Promote due scheduled jobs of these queues, then lease up to `limit` ready
-- ones named in `names` (nil: any name) under the claim's fencing token (made
-- unique per call by the caller). Jobs of other names are never read. Returns
-- their records.
local function claim_jobs(now_text, lease, limit, queue_list, names, token)
  -- "" (the worker's claims, and one sent ahead behind a blocking wait, which
  -- runs whenever the wait ends): the server's clock at that moment.
  now_text = now_or_server(now_text)
  local now = tonumber(now_text)
  local nq = #queue_list
  local served = nil
  if names then
    served = {}
    for _, name in ipairs(names) do served[name] = true end
  end
  -- Promote due scheduled jobs (delays, retry backoff) of these queues.
  for i = 1, nq do
    local queue = queue_list[i]
    local due = redis.call("ZRANGEBYSCORE", scheduled_key(queue), "-inf", now, "LIMIT", 0, 1000)
    local others = {} -- name -> promoted jobs this claim cannot take
    for _, id in ipairs(due) do
      local name = promote(id, queue)
      if served and not served[name] then others[name] = (others[name] or 0) + 1 end
    end
    -- Wake the workers that serve them instead.
    for name, n in pairs(others) do wake(queue, name, n) end
    adopt_legacy(queue)
  end

  -- The sets to take from: one per (queue, served name).
  local sets, set_queues, set_names, seen = {}, {}, {}, {}
  for i = 1, nq do
    local queue = queue_list[i]
    for _, name in ipairs(names or redis.call("SMEMBERS", names_key(queue))) do
      local key = queued_key(queue, name)
      if not seen[key] then
        seen[key] = true
        local n = #sets + 1
        sets[n], set_queues[n], set_names[n] = key, queue, name
      end
    end
  end

  local ids, queues = {}, {}
  if #sets == 1 then
    local popped = redis.call("ZPOPMIN", sets[1], limit)
    for i = 1, #popped, 2 do
      ids[#ids + 1] = popped[i]
      queues[#queues + 1] = set_queues[1]
    end
    if #popped > 0 and #popped < 2 * limit then
      redis.call("SREM", names_key(set_queues[1]), set_names[1])
    end
  else
    -- Several sets: take the lowest score across their heads, one job at a
    -- time; only the set a job came from is read again.
    local function head(i, taken)
      local h = redis.call("ZRANGE", sets[i], 0, 0, "WITHSCORES")
      if h[1] then return {h[1], tonumber(h[2])} end
      -- Emptied by this claim: its name leaves the queue's directory until a job comes.
      if taken then redis.call("SREM", names_key(set_queues[i]), set_names[i]) end
      return false
    end
    local heads = {}
    for i = 1, #sets do heads[i] = head(i, false) end
    while #ids < limit do
      local best = nil
      for i = 1, #sets do
        local h = heads[i]
        -- Equal scores: the smaller id (created first) wins, as within one set.
        if h and (best == nil or h[2] < heads[best][2]
            or (h[2] == heads[best][2] and h[1] < heads[best][1])) then
          best = i
        end
      end
      if not best then break end
      redis.call("ZREM", sets[best], heads[best][1])
      ids[#ids + 1] = heads[best][1]
      queues[#queues + 1] = set_queues[best]
      heads[best] = head(best, true)
    end
  end

  return lease_jobs(ids, queues, now_text, lease, token)
end
