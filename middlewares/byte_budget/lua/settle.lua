-- Byte budget: settle a reservation to the bytes the download really took.
--
-- The reserved entry leaves the in-flight set and the true size enters the
-- settled log, scored with the settle time (after the last byte arrived), so it
-- counts for one window from now. A size above the reservation is debt that
-- later reservations wait for; below it, the difference is free at once.
-- Also folds the size into the website's learned estimate (Jacobson/Karels
-- smoothing, as TCP does for round-trip times: mean += (x - mean) / 8,
-- dev += (|x - mean| - dev) / 4) and a slowly decaying maximum (x 0.995 per
-- settle), so that a website whose pages come in a few sizes (small listings,
-- larger articles) is estimated at its larger pages: an estimate below the true
-- size is an overrun when the size is unknowable (chunked, no Content-Length).
--
-- KEYS[1]  <prefix>:bb:{<website>}:log       sorted set, settled entries
-- KEYS[2]  <prefix>:bb:{<website>}:inflight  sorted set, granted, not settled
-- KEYS[3]  <prefix>:bb:{<website>}:state     hash: used, seq, mean, dev, max, warned_until
-- ARGV[1]  member returned by reserve.lua ("" when there was no reservation)
-- ARGV[2]  bytes to count now (integer >= 0)
-- ARGV[3]  window length in seconds
-- ARGV[4]  lease in seconds (for the key TTL)
-- ARGV[5..] sizes to learn from (integers; < 0 = learn nothing); a lease
--          settles the sizes of all its downloads at once
-- Returns  {now, used}  as strings

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local member = ARGV[1]
local bytes = tonumber(ARGV[2])
local window = tonumber(ARGV[3])

local used = tonumber(redis.call('HGET', KEYS[3], 'used') or '0')
if member ~= '' then
  local reserved = tonumber(string.match(member, ':(%d+)$'))
  -- Still in flight, or moved to the log when its lease ran out: either way it
  -- is still counted in `used` and is replaced by the true size. Already gone
  -- from the window: nothing to take back.
  if redis.call('ZREM', KEYS[2], member) == 1 or redis.call('ZREM', KEYS[1], member) == 1 then
    used = used - reserved
  end
end
if bytes > 0 then
  local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
  redis.call('ZADD', KEYS[1], now, seq .. ':' .. bytes)
  used = used + bytes
end
if used < 0 then
  used = 0
end
redis.call('HSET', KEYS[3], 'used', used)

local mean = tonumber(redis.call('HGET', KEYS[3], 'mean') or '')
local dev = tonumber(redis.call('HGET', KEYS[3], 'dev') or '0')
local max = tonumber(redis.call('HGET', KEYS[3], 'max') or '0')
local learned = false
for i = 5, #ARGV do
  local x = tonumber(ARGV[i])
  if x >= 0 then
    if mean then
      local err = x - mean
      mean = mean + err / 8
      dev = dev + (math.abs(err) - dev) / 4
      max = math.max(x, max * 0.995)
    else
      mean, dev, max = x, x / 2, x
    end
    learned = true
  end
end
if learned then
  redis.call('HSET', KEYS[3], 'mean', mean, 'dev', dev, 'max', max)
end

local ttl = math.ceil((2 * window + tonumber(ARGV[4])) * 1000)
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {tostring(now), tostring(used)}
