-- A closing worker: the requests it was given and did not acknowledge (pops
-- whose reply never reached it, requests it could not finish) go back to
-- their websites' queues with their priority and the website's not-before;
-- its lease ends. See pop.lua and leases.lua.
--
-- KEYS[1]  sites zset: website -> time it may next be served
-- KEYS[2]  not-before zset: website -> not-before time
-- KEYS[3]  the worker's pops hash: '<pop id>.<i>' -> the request (leases.lua)
-- KEYS[4]  leases zset: worker id -> lease deadline
-- KEYS[5]  depths zset: website -> queued requests (depth.lua)
-- KEYS[6]  queued counter: total queued requests (depth.lua)
-- ARGV[1]  queue key prefix (as in pop.lua)
-- ARGV[2]  worker id
-- ARGV[3]  P, then P pairs (website, k): k requests the worker popped
--          since it last sent them, for the depth index (depth.lua)
-- ARGV[4 + 2P..] fields acknowledged (handled: not requeued)
-- return   how many requests went back to their queues
-- @include depth.lua
-- @include leases.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pending, acked = read_pending(3)
for j = acked, #ARGV, 4000 do redis.call('HDEL', KEYS[3], unpack(ARGV, j, math.min(j + 3999, #ARGV))) end
local delta = {}
local requeued = requeue_all(KEYS[1], KEYS[2], ARGV[1], now, KEYS[3], delta)
add_depths(KEYS[5], KEYS[6], delta, 0, pending)
redis.call('ZREM', KEYS[4], ARGV[2])
return requeued
