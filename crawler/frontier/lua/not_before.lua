-- Mark a website "not before T": no worker pops from it until T.
-- Keeps the later of the existing mark and T.
--
-- KEYS[1]  sites zset: website -> time it may next be served
-- KEYS[2]  not-before zset: website -> not-before time
-- ARGV[1]  website
-- ARGV[2]  T, Unix time in seconds (Redis server clock)
-- return   the website's not-before time now in force, as a string
redis.call('ZADD', KEYS[2], 'GT', tonumber(ARGV[2]), ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'GT', tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZSCORE', KEYS[2], ARGV[1])
