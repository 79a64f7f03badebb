-- ARGV: prefix, now ("" = the server's), jobs (JSON). Returns {now, insert's reply}.
local now_text = now_or_server(ARGV[2])
return {now_text, insert(cjson.decode(ARGV[3]), now_text)}
