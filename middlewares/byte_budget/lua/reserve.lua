-- Byte budget: reserve bytes for one download (or a lease of several) from one website.
--
-- A sliding-window reservation log. Every reservation is one entry whose member
-- is "<seq>:<bytes>" and whose score is the time it *ended*:
--   KEYS[2] (in flight): score = grant time + expiry, an upper bound on when
--           the download ends; settle.lua moves it to KEYS[1].
--   KEYS[1] (settled):   score = settle time, i.e. after the last byte arrived.
-- An entry counts against the window while score > now - window, so a download
-- counts from its grant until one window after its last byte. All times are the
-- Redis server's TIME (worker clocks may differ).
--
-- Why this bounds every sliding window (proof, also in docs/byte-budget.md):
-- take any window [s, s + W) of wire time and the bytes that arrived in it.
-- Each byte was covered, before it arrived, by a reservation (this script) or
-- a draw (draw.lua) that was checked against used <= b; let g be the last such
-- check. Every download with bytes in the window ended at e >= s > g - W, so
-- at g it was still counted (settled at its true size, or in flight at what it
-- had reserved and drawn). Hence the window holds at most b bytes, plus the
-- bytes of the one download that holds the overdraft token (granted only while
-- used <= b, held until one window after that download ended): b + one response.
--
-- KEYS[1]  <prefix>:bb:{<website>}:log       sorted set, settled entries
-- KEYS[2]  <prefix>:bb:{<website>}:inflight  sorted set, granted, not settled
-- KEYS[3]  <prefix>:bb:{<website>}:state     hash: used, seq, sizes, estimate,
--                                            warned_until, od_holder, od_until
-- ARGV[1]  budget b in bytes per window (integer >= 0)
-- ARGV[2]  window length in seconds (float > 0)
-- ARGV[3]  bytes to reserve; 0 = use the learned estimate
-- ARGV[4]  default estimate in bytes (used until sizes have been learned)
-- ARGV[5]  reservation expiry in seconds: an unsettled reservation counts as
--          ended at grant + expiry (a crashed worker cannot hold the budget for ever)
-- ARGV[6]  retry delay in seconds when only in-flight downloads block
-- ARGV[7]  lease size in downloads L (1: no lease): reserve L * n bytes for
--          several downloads of one worker, but only while that is at most a
--          quarter of the room the budget has left
-- ARGV[8]  holder: id of the download, for the overdraft token ("" = none)
-- ARGV[9]  1: this download must run as the overdraft (a page known to be
--          larger than b, or a retried stopped page of unknown size); it is
--          granted its full size while the token is free and used <= b
-- Returns  {1, member, now, n, granted, overdraft}  granted >= n bytes reserved;
--                                                   overdraft = 1: holds the token
--          {0, not_before, now, n, warn, used}      denied; warn = 1 for the first
--                                                   denial of a window caused by the
--                                                   budget (log it once)
--          floats are returned as strings (Lua numbers would be truncated).

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

local n = tonumber(ARGV[3])
local holder = ARGV[8]
if n <= 0 then
  -- An estimate is capped at b: a page above it draws the rest (draw.lua).
  n = math.min(tonumber(redis.call('HGET', KEYS[3], 'estimate') or ARGV[4]), math.max(budget, 1))
end
n = math.max(math.floor(n), 1)
local expiry = tonumber(ARGV[5])

-- Keys live for two windows plus an expiry past the last activity.
local ttl = math.ceil((2 * window + expiry) * 1000)
local function touch()
  for i = 1, 3 do
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
local function grant(amount, overdraft)
  local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
  local member = seq .. ':' .. amount
  redis.call('ZADD', KEYS[2], now + expiry, member)
  redis.call('HSET', KEYS[3], 'used', used + amount)
  if overdraft == 1 then
    redis.call('HSET', KEYS[3], 'od_holder', holder, 'od_until', now + expiry)
  end
  touch()
  return {1, member, tostring(now), n, amount, overdraft}
end

if budget > 0 and (n > budget or ARGV[9] == '1') then
  if token_free and holder ~= '' then
    return grant(n, 1)
  end
  local not_before = now + tonumber(ARGV[6])
  if od_holder == '' and od_until > not_before then
    not_before = od_until
  end
  touch()
  return {0, tostring(not_before), tostring(now), n, 0, tostring(used)}
end

if budget > 0 and used + n <= budget then
  local granted = n
  local wish = n * (tonumber(ARGV[7] or '1') or 1)
  if wish > n and budget - used - n >= 4 * (wish - n) then
    granted = wish
  end
  return grant(granted, 0)
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
touch()
return {0, tostring(not_before), tostring(now), n, warn, tostring(used)}
