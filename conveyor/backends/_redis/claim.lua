-- ARGV: prefix, now, lease, limit, names (JSON array; "" = any name), queues...
local queues = {}
for i = 6, #ARGV do queues[#queues + 1] = ARGV[i] end
local names = nil
if ARGV[5] ~= "" then names = cjson.decode(ARGV[5]) end
return claim_jobs(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), queues, names)
