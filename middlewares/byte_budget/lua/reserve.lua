-- Byte budget: reserve bytes for one download from one website.
--
-- A sliding-window reservation log. Every download is one entry whose member is
-- "<seq>:<bytes>" and whose score is the time it *ended*:
--   KEYS[2] (in flight): score = lease end (grant time + lease), an upper bound
--           on when the download ends; settle.lua moves it to KEYS[1].
--   KEYS[1] (settled):   score = settle time, i.e. after the last byte arrived.
-- An entry counts against the window while score > now - window, so a download
-- counts from its grant until one window after its last byte. All times are the
-- Redis server's TIME (worker clocks may differ).
--
-- Why this bounds every sliding window (proof, also in the README): take any
-- window [s, s + W) of wire time and the downloads whose bytes arrived in it.
-- Let D be the one granted last, at g <= (its wire time) < s + W. Every other
-- such download X was granted before g and ended at e_X >= (its wire time) >= s
-- > g - W, so at g it was still counted: settled at its true size, or in flight
-- at its reservation. The grant of D checked used + n_D <= b, so the bytes of
-- the window are <= b plus whatever in-flight downloads received beyond their
-- reservation (the strict mode stops those with a known Content-Length; only a
-- response whose size was unknowable can overrun).
--
-- KEYS[1]  <prefix>:bb:{<website>}:log       sorted set, settled entries
-- KEYS[2]  <prefix>:bb:{<website>}:inflight  sorted set, granted, not settled
-- KEYS[3]  <prefix>:bb:{<website>}:state     hash: used, seq, mean, dev, max, warned_until
-- ARGV[1]  budget b in bytes per window (integer >= 0)
-- ARGV[2]  window length in seconds (float > 0)
-- ARGV[3]  bytes to reserve; 0 = use the learned estimate
-- ARGV[4]  default estimate in bytes (used until sizes have been learned)
-- ARGV[5]  lease in seconds: an unsettled reservation counts as ended at
--          grant + lease (a crashed worker cannot hold the budget for ever)
-- ARGV[6]  retry delay in seconds when only in-flight downloads block
-- ARGV[7]  estimate margin k: estimate = max(mean + k * mean deviation,
--          decaying maximum), see settle.lua
-- ARGV[8]  lease size in downloads L (optional, default 1): reserve L * n
--          bytes for several downloads of one worker, but only while that is
--          at most a quarter of the room the budget has left; near the limit
--          every download reserves for itself
-- Returns  {1, member, now, n, granted}                granted >= n bytes are reserved
--          (member for settle.lua)
--          {0, not_before, now, n, warn}            denied; warn = 1 for the first
--                                                   denial of a window (log it once)
--          floats are returned as strings (Lua numbers would be truncated).

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local budget = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local lease = tonumber(ARGV[5])

local function size_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local used = tonumber(redis.call('HGET', KEYS[3], 'used') or '0')

-- Leases that ran out without a settle: the download ended at the latest then.
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

if n <= 0 then
  local mean = tonumber(redis.call('HGET', KEYS[3], 'mean') or '')
  if mean then
    local dev = tonumber(redis.call('HGET', KEYS[3], 'dev') or '0')
    local max = tonumber(redis.call('HGET', KEYS[3], 'max') or '0')
    n = math.ceil(math.max(mean + tonumber(ARGV[7]) * dev, max))
  else
    n = tonumber(ARGV[4])
  end
end
-- A download larger than the whole budget waits for an empty window.
if n > budget then
  n = budget
end
n = math.max(math.floor(n), 1)

-- Keys live for two windows plus a lease past the last activity.
local ttl = math.ceil((2 * window + lease) * 1000)

if budget > 0 and used + n <= budget then
  local granted = n
  local wish = n * (tonumber(ARGV[8] or '1') or 1)
  if wish > n and budget - used - n >= 4 * (wish - n) then
    granted = wish
  end
  local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
  local member = seq .. ':' .. granted
  redis.call('ZADD', KEYS[2], now + lease, member)
  redis.call('HSET', KEYS[3], 'used', used + granted)
  for i = 1, 3 do
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  return {1, member, tostring(now), n, granted}
end

-- Denied: the earliest time enough settled bytes will have left the window.
local not_before = now + tonumber(ARGV[6])
if budget <= 0 then
  not_before = now + window
else
  local need = used + n - budget
  local freed = 0
  local entries = redis.call('ZRANGE', KEYS[1], 0, 999, 'WITHSCORES')
  for i = 1, #entries, 2 do
    freed = freed + size_of(entries[i])
    if freed >= need then
      not_before = tonumber(entries[i + 1]) + window
      break
    end
  end
end
local warn = 0
local warned_until = tonumber(redis.call('HGET', KEYS[3], 'warned_until') or '0')
if now >= warned_until then
  redis.call('HSET', KEYS[3], 'warned_until', now + window)
  warn = 1
end
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {0, tostring(not_before), tostring(now), n, warn}
