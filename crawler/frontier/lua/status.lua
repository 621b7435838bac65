-- The cluster's view of a frontier, for idle workers; optionally records
-- this worker as busy (a heartbeat). It also takes the worker's
-- acknowledgements, renews its lease and returns dead workers' expired
-- leases to their queues (lua/leases.lua), so an idle worker reclaims them.
--
-- KEYS[1]  sites zset: website -> time it may next be served
-- KEYS[2]  workers zset: worker id -> last time it was busy
-- KEYS[3]  not-before zset: website -> not-before time
-- KEYS[4]  this worker's pops hash (see pop.lua)
-- KEYS[5]  leases zset: worker id -> lease deadline
-- KEYS[6]  depths zset: website -> queued requests (depth.lua)
-- KEYS[7]  queued counter: total queued requests (depth.lua)
-- ARGV[1]  worker id
-- ARGV[2]  1 to record this worker as busy now, else 0
-- ARGV[3]  lease seconds (0: leases off)
-- ARGV[4]  queue key prefix (as in pop.lua)
-- ARGV[5]  pops hash key prefix (as in pop.lua)
-- ARGV[6]  P, then P pairs (website, k): k requests the worker popped
--          since it last sent them, for the depth index (depth.lua)
-- ARGV[7 + 2P..] fields of the worker's pops hash acknowledged
-- return   {now, websites with work, websites ready now,
--           last time any worker was busy (or -1), workers holding leases,
--           requests reclaimed}; times are strings
-- @include depth.lua
-- @include leases.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[2] == '1' then redis.call('ZADD', KEYS[2], now, ARGV[1]) end
local pending, acked = read_pending(6)
for j = acked, #ARGV, 4000 do redis.call('HDEL', KEYS[4], unpack(ARGV, j, math.min(j + 3999, #ARGV))) end
renew(KEYS[5], KEYS[4], ARGV[1], now, tonumber(ARGV[3]))
local delta = {}
local reclaimed = reclaim(KEYS[5], KEYS[1], KEYS[3], ARGV[4], ARGV[5], now, 10, delta)
add_depths(KEYS[6], KEYS[7], delta, 0, pending)
-- forget workers not seen for a day
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 86400)
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
return {string.format('%.6f', now), redis.call('ZCARD', KEYS[1]),
        redis.call('ZCOUNT', KEYS[1], '-inf', now),
        last[2] and string.format('%.6f', tonumber(last[2])) or '-1',
        redis.call('ZCARD', KEYS[5]), reclaimed}
