-- ARGV: prefix, ids... Deletes each listed job that is queued or scheduled
-- (a broker refused its message: base.DeliveryStore.withdraw), its key
-- with it; returns how many.
local removed = 0
for i = 2, #ARGV do
  local state = redis.call("HGET", jkey(ARGV[i]), "state")
  if state == "queued" or state == "scheduled" then
    delete_job(ARGV[i])
    removed = removed + 1
  end
end
return removed
