-- ARGV: prefix, ids... Deletes each listed job never delivered (queued or
-- scheduled with no attempt yet: a broker refused its message;
-- base.DeliveryStore.withdraw), its key with it; returns their ids.
local removed = {}
for i = 2, #ARGV do
  local h = redis.call("HMGET", jkey(ARGV[i]), "state", "attempts")
  if (h[1] == "queued" or h[1] == "scheduled") and tonumber(h[2]) == 0 then
    delete_job(ARGV[i])
    table.insert(removed, ARGV[i])
  end
end
return removed
