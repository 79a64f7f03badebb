-- ARGV: prefix, now, lease, limit, token, names (JSON array; "" = any name), queues...
local queues = {}
for i = 7, #ARGV do queues[#queues + 1] = ARGV[i] end
local names = nil
if ARGV[6] ~= "" then names = cjson.decode(ARGV[6]) end
return claim_jobs(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), queues, names, ARGV[5])
