-- A closing worker's pops that never reached it go back to their websites'
-- queues (with their priority and the website's not-before); the rest of its
-- pops hash is acknowledged. See pop.lua.
--
-- KEYS[1]  sites zset: website -> time it may next be served
-- KEYS[2]  not-before zset: website -> not-before time
-- KEYS[3]  the worker's pops hash: pop id -> cjson [[website, member, score], ...]
-- KEYS[4]  depths zset: website -> queued requests (depth.lua)
-- KEYS[5]  queued counter: total queued requests (depth.lua)
-- ARGV[1]  queue key prefix (as in pop.lua)
-- ARGV[2..] pop ids whose reply the worker got (handled: not requeued)
-- return   how many requests went back to their queues

-- @include depth.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 2, #ARGV do redis.call('HDEL', KEYS[3], ARGV[i]) end
local requeued = 0
local delta = {}
for _, record in ipairs(redis.call('HVALS', KEYS[3])) do
  for _, e in ipairs(cjson.decode(record)) do
    local site, member, score = e[1], e[2], e[3]
    delta[site] = (delta[site] or 0) + redis.call('ZADD', ARGV[1] .. site, score, member)
    local ready = now
    local nb = redis.call('ZSCORE', KEYS[2], site)
    if nb and tonumber(nb) > ready then ready = tonumber(nb) end
    redis.call('ZADD', KEYS[1], 'NX', ready, site)
    requeued = requeued + 1
  end
end
add_depths(KEYS[4], KEYS[5], delta, {})
redis.call('DEL', KEYS[3])
return requeued
