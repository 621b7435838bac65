-- window.lua: the part of reserve.lua and draw.lua that brings a website's
-- window up to date. Not a script of its own: store.load_script puts it where a
-- script says "-- @include window.lua" (Redis scripts cannot import each other).
--
-- Expects  KEYS[1] window log (zset member "<id>:<bytes>" by time),
--          KEYS[2] reservations in flight (zset by expiry), KEYS[3] state hash;
--          ARGV[1] budget b (bytes), ARGV[2] window (seconds).
-- Defines  now (Redis clock), budget, window, size_of(member), used (bytes in
--          the window, stored back in the state hash), od_holder, od_until and
--          token_free (the overdraft token may be taken now).

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local budget = tonumber(ARGV[1])
local window = tonumber(ARGV[2])

local function size_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local used = tonumber(redis.call('HGET', KEYS[3], 'used') or '0')

-- Reservations that expired without a settle: the download ended at the latest then.
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES')
for i = 1, #stale, 2 do
  redis.call('ZADD', KEYS[1], stale[i + 1], stale[i])
end
if #stale > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end

-- Entries that left the window.
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
for i = 1, #old do
  used = used - size_of(old[i])
end
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
end
if used < 0 or (redis.call('ZCARD', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[2]) == 0) then
  used = 0
end
redis.call('HSET', KEYS[3], 'used', used)

-- The overdraft token: at most one download of the website may run past the
-- budget. Held while it downloads (od_holder, od_until = its reservation's
-- expiry), then busy until one window after it ended (its bytes left the window).
local od_holder = redis.call('HGET', KEYS[3], 'od_holder') or ''
local od_until = tonumber(redis.call('HGET', KEYS[3], 'od_until') or '0')
local token_free = now >= od_until and used <= budget and budget > 0
