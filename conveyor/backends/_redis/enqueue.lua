-- ARGV: prefix, now, n, then 10 values per job
return insert(4, tonumber(ARGV[3]), tonumber(ARGV[2]))
