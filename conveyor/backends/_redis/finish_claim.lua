-- ARGV: prefix, keep_completed, keep_failed, outcomes (JSON), now, lease, limit, token,
-- queues...
-- A worker's acknowledgements and its next claim in one round trip.
local queues = {}
for i = 9, #ARGV do queues[#queues + 1] = ARGV[i] end
local accepted = finish_jobs(ARGV[2], ARGV[3], ARGV[4])
local claimed = {}
if tonumber(ARGV[7]) > 0 then
  claimed = claim_jobs(ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), queues, ARGV[8])
end
return {accepted, claimed}
