-- ARGV: prefix, now, lease, limit, queues...
local queues = {}
for i = 5, #ARGV do queues[#queues + 1] = ARGV[i] end
return claim_jobs(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), queues)
