-- Take a website off the list of websites with politeness state, unless it was marked again since.
--
-- KEYS[1]  active zset <p>:pol:active: website -> Redis time of its last mark
-- ARGV[1]  website
-- ARGV[2]  Redis time at which its state was seen clean
--
-- Returns 1 if removed, else 0. The zset is not hash-tagged per website (one key for the whole
-- cluster): this script and the marks (ZADD GT) follow the per-website scripts in separate calls,
-- and the time comparison keeps a newer mark from being removed by an older "clean".

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
