-- ARGV: prefix, keep_completed ("" = all), keep_failed, outcomes (JSON)
return finish_jobs(ARGV[2], ARGV[3], ARGV[4])
