-- ARGV: prefix, now, jobs (JSON)
return insert(cjson.decode(ARGV[3]), tonumber(ARGV[2]))
