-- window.lua: the part of reserve.lua and draw.lua that brings a website's
-- window up to date. Not a script of its own: store.load_script puts it where a
-- script says "-- @include window.lua" (Redis scripts cannot import each other).
--
-- Expects  KEYS[1] window log (zset member "<id>:<bytes>" by time),
--          KEYS[2] reservations in flight (zset by expiry), KEYS[3] state hash,
--          KEYS[4] the log's index by bytes settled (log.lua);
--          ARGV[1] budget b (bytes), ARGV[2] window (seconds).
-- Defines  now (Redis clock), budget, window, size_of(member), used (bytes in
--          the window), od_holder, od_until, token_free (the overdraft token
--          may be taken now), state (the state hash's fields, read with one
--          HMGET; false where missing), put(field, value) and
--          finish(expiry): one HSET of the fields put, and the keys' TTLs.

-- @include log.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local budget = tonumber(ARGV[1])
local window = tonumber(ARGV[2])

local FIELDS = {'used', 'seq', 'cum', 'od_holder', 'od_until', 'od_room', 'estimate', 'learned', 'exposure',
                'warned_until'}
local state = {}
do
  local values = redis.call('HMGET', KEYS[3], unpack(FIELDS))
  for i, f in ipairs(FIELDS) do
    state[f] = values[i]
  end
end
local changed = {}
local function put(field, value)
  state[field] = value
  changed[field] = true
end
-- Keys live for two windows plus an expiry past the last write: every call
-- that writes renews the log, the reservations in flight and the state (an
-- entry must not vanish while `used` counts it), and the index when it wrote
-- to it. A call that writes nothing (a denial that changed nothing: the
-- website is denied again until its not-before) renews nothing: no entry
-- written earlier outlives the TTL its write set (an entry leaves the window
-- at most expiry + window after it was written), and a denial is then a
-- read-only script (nothing to replicate).
local function finish(expiry)
  local args = {}
  for f in pairs(changed) do
    args[#args + 1] = f
    args[#args + 1] = state[f]
  end
  if #args > 0 then
    redis.call('HSET', KEYS[3], unpack(args))
  elseif not (written[1] or written[2] or written[4]) then
    return
  end
  local ttl = math.ceil((2 * window + expiry) * 1000)
  for i = 1, 3 do
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  if written[4] then
    redis.call('PEXPIRE', KEYS[4], ttl)
  end
end

local used = tonumber(state.used or '0')

-- Reservations that expired without a settle: the download ended at the latest then.
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES')
if #stale > 0 then
  local entries = {}
  for i = 1, #stale, 2 do
    entries[#entries + 1] = {tonumber(stale[i + 1]), stale[i]}
  end
  put('cum', log_add(entries, tonumber(state.cum or '0')))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end

-- Entries that left the window.
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #old > 0 then
  for i = 1, #old do
    used = used - size_of(old[i])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  log_remove(old)
end
if used < 0 or redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then
  used = 0
end
if used ~= tonumber(state.used or '0') then
  put('used', used)  -- a denial that changed nothing writes nothing (but renews the TTLs)
end

-- The overdraft token: at most one download of the website may run past the
-- budget. Held while it downloads (od_holder, od_until = its reservation's
-- expiry), then busy until one window after it ended (its bytes left the window).
local od_holder = state.od_holder or ''
local od_until = tonumber(state.od_until or '0')
local token_free = now >= od_until and used <= budget and budget > 0
