-- ARGV: prefix, now, lease, limit, token, queues...
local queues = {}
for i = 6, #ARGV do queues[#queues + 1] = ARGV[i] end
return claim_jobs(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), queues, ARGV[5])
