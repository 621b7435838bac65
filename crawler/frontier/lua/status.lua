-- The cluster's view of a frontier, for idle workers; optionally records
-- this worker as busy (a heartbeat).
--
-- KEYS[1]  sites zset: website -> time it may next be served
-- KEYS[2]  workers zset: worker id -> last time it was busy
-- ARGV[1]  worker id
-- ARGV[2]  1 to record this worker as busy now, else 0
-- return   {now, websites with work, websites ready now,
--           last time any worker was busy (or -1)}; times are strings
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[2] == '1' then redis.call('ZADD', KEYS[2], now, ARGV[1]) end
-- forget workers not seen for a day
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 86400)
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
return {string.format('%.6f', now), redis.call('ZCARD', KEYS[1]),
        redis.call('ZCOUNT', KEYS[1], '-inf', now),
        last[2] and string.format('%.6f', tonumber(last[2])) or '-1'}
