-- May a request to this website go now? Parks, the half-open probe, Crawl-delay and request rate, atomically.
--
-- KEYS[1]  state hash <p>:pol:{W}:state (until, probe, probe_token, probe_until, probe_since, level, last,
--          fails, fail_since, opens, breaker)
-- KEYS[2]  Crawl-delay gate <p>:pol:{W}:next: string, Unix time (Redis clock) of the next allowed request
-- KEYS[3]  request-rate log <p>:pol:{W}:log: zset of permits, score = latest time a permit may be used
-- KEYS[4]  failing URLs <p>:pol:{W}:fails: set of URL ids known to fail (see report.lua)
-- ARGV[1]  token: the request's identity (a requeued probe keeps its token and is let through again)
-- ARGV[2]  Crawl-delay d in seconds, margin included (0: no Crawl-delay)
-- ARGV[3]  request rate: at most r requests ... (0: no rate limit)
-- ARGV[4]  ... per window w seconds, margin included
-- ARGV[5]  permits wanted (>= 1); more than 1 only without Crawl-delay: a lease for several downloads
-- ARGV[6]  lease seconds: a lease's permits are logged at now + lease, the latest time they may be used
-- ARGV[7]  probe timeout seconds: another probe may go if the first gave no answer by then
-- ARGV[8]  retry seconds: when to ask again while the probe is out
-- ARGV[9]  URL id of the request ("": unknown)
-- ARGV[10] grace seconds: a URL known to fail becomes the probe only if no other request took it
--          within this long after the probe became free (a broken page says nothing of the website)
--
-- Returns {permits granted (0: denied), not-before (string, 0 when granted), now (string),
--          1 if this request is the probe else 0, reason ("" when granted; "parked", "probe",
--          "delay", "rate"), 1 if the state is clean (no park, probe or failure count) else 0}.
-- Time is the Redis server's (TIME), so every worker uses one clock.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local st = KEYS[1]
local token = ARGV[1]
local delay = tonumber(ARGV[2])
local rate_n = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local lease = tonumber(ARGV[6])
local function fmt(x) return string.format('%.6f', x) end

local h = redis.call('HMGET', st, 'until', 'probe', 'probe_token', 'probe_until', 'fails', 'probe_since')
local parked = tonumber(h[1] or '0')
local clean = 0
if parked <= now and h[2] ~= '1' and tonumber(h[5] or '0') == 0 then clean = 1 end
if parked > now then
  return {0, fmt(parked), fmt(now), 0, 'parked', 0}
end
local probing = h[2] == '1'
if probing and h[3] and h[3] ~= token and tonumber(h[4] or '0') > now then
  return {0, fmt(math.min(tonumber(h[4]), now + tonumber(ARGV[8]))), fmt(now), 0, 'probe', 0}
end
if probing and h[3] ~= token and ARGV[9] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[9]) == 1 then
  local free = tonumber(h[6] or h[1] or '0') + tonumber(ARGV[10])
  if free > now then
    return {0, fmt(free), fmt(now), 0, 'probe', 0}
  end
end

if delay > 0 then
  local nxt = tonumber(redis.call('GET', KEYS[2]) or '0')
  if nxt > now then
    return {0, fmt(nxt), fmt(now), 0, 'delay', clean}
  end
end
local n = 1
if rate_n > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  -- Leased permits are logged in the future (their latest use): counted too.
  local used = redis.call('ZCARD', KEYS[3])
  if used >= rate_n then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {0, fmt(tonumber(oldest[2]) + window), fmt(now), 0, 'rate', clean}
  end
  if delay <= 0 and not probing then n = math.max(1, math.min(want, rate_n - used)) end
  local at = now
  if n > 1 then at = now + lease end
  for i = 1, n do
    redis.call('ZADD', KEYS[3], at, token .. ':' .. i)
  end
  redis.call('PEXPIRE', KEYS[3], math.ceil((window + lease) * 1000) + 1000)
end
if delay > 0 then
  redis.call('SET', KEYS[2], fmt(now + delay), 'PX', math.ceil(delay * 1000) + 1000)
end
if probing then
  redis.call('HSET', st, 'probe_token', token, 'probe_until', fmt(now + tonumber(ARGV[7])))
  return {1, '0', fmt(now), 1, '', 0}
end
return {n, '0', fmt(now), 0, '', clean}
