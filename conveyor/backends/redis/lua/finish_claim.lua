-- ARGV: prefix, keep_completed, keep_failed, outcomes (JSON), now, lease, limit, token,
-- names (JSON array; "" = any name), queues...
-- A worker's acknowledgements and its next claim in one round trip.
local queues = {}
for i = 10, #ARGV do queues[#queues + 1] = ARGV[i] end
local names = nil
if ARGV[9] ~= "" then names = cjson.decode(ARGV[9]) end
local accepted = finish_jobs(ARGV[2], ARGV[3], ARGV[4])
local claimed = {}
if tonumber(ARGV[7]) > 0 then
  claimed = claim_jobs(ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), queues, names, ARGV[8])
end
return {accepted, claimed}
