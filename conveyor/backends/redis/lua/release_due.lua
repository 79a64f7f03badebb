-- ARGV: prefix, now ("" = the server's), limit, queues...
-- A broker's store (base.DeliveryStore.release_due): move up to `limit` due
-- scheduled jobs of these queues to their ready sets, earliest first (equal
-- times: by id, as within one set), waking the workers that serve them.
-- Returns their records.
local now_text = now_or_server(ARGV[2])
local limit = tonumber(ARGV[3])
local due, seen = {}, {}
for i = 4, #ARGV do
  local queue = ARGV[i]
  if not seen[queue] and limit > 0 then
    seen[queue] = true
    -- At most `limit` from each queue: the earliest `limit` overall are among them.
    local found = redis.call("ZRANGEBYSCORE", scheduled_key(queue), "-inf", now_text,
      "WITHSCORES", "LIMIT", 0, limit)
    for k = 1, #found, 2 do due[#due + 1] = {found[k], tonumber(found[k + 1]), queue} end
  end
end
table.sort(due, function(a, b) return a[2] < b[2] or (a[2] == b[2] and a[1] < b[1]) end)
local out, woken = {}, {}
for k = 1, math.min(limit, #due) do
  local id, queue = due[k][1], due[k][3]
  local name = promote(id, queue)
  local by_name = woken[queue] or {}
  woken[queue] = by_name
  by_name[name] = (by_name[name] or 0) + 1
  out[#out + 1] = record(id)
end
for queue, by_name in pairs(woken) do
  for name, n in pairs(by_name) do wake(queue, name, n) end
end
return out
