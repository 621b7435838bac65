-- Report what a response (or a failed download) said about its website: park, back off, count, open or close.
--
-- KEYS[1]  state hash <p>:pol:{W}:state (see admit.lua)
-- KEYS[2]  failing URLs <p>:pol:{W}:fails: set of URL ids of the current failure streak and,
--          while the breaker is open, every URL known to fail (its probes are inconclusive)
-- ARGV[1]  kind: "rate" (429/503...: slow down), "fail" (breaker failure), "ok" (success)
-- ARGV[2]  token of the request if it was the probe, else ""
-- ARGV[3]  Retry-After in seconds, already capped (-1: none)
-- ARGV[4]  backoff base seconds      ARGV[5]  backoff factor     ARGV[6]  backoff max seconds
-- ARGV[7]  forgive: a rate signal more than this many seconds after the last one starts at level 0
-- ARGV[8]  jitter multiplier, 1 + POLITENESS_BACKOFF_JITTER * uniform(-1, 1), drawn by the caller
-- ARGV[9]  K: consecutive failures that open the breaker
-- ARGV[10] cooling seconds          ARGV[11] cooling factor        ARGV[12] cooling max seconds
-- ARGV[13] "ok" only: when the request was sent (Redis clock; 0: unknown). A success resets the
--          failure count only if it was sent after the first failure of the streak was reported:
--          slow downloads that started while the website was healthy say nothing about it now.
-- ARGV[14] URL id of the request ("": unknown, always counted as a new URL). The failure streak
--          counts distinct URLs: a retry of a URL already in the streak does not add to it.
--
-- Returns {transition, until (string), now (string), level or failure count, 1 if clean else 0,
--          1 if the breaker is open else 0}.
-- transition: "parked" (rate signal: parked until), "opened", "reopened" (probe failed), "closed"
-- (probe succeeded, breaker was open), "recovered" (probe succeeded after a rate park), "failed"
-- (failure counted, breaker still closed), "inconclusive" (the probe failed, but its URL was already
-- known to fail: the breaker stays open with its period, and the next request may be the probe),
-- "" (nothing changed: e.g. a request sent before the current park, whose answer belongs to the
-- same incident, or a URL already counted in the failure streak).

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local st = KEYS[1]
local failing = KEYS[2]
local url = ARGV[14] or ''
local kind = ARGV[1]
local token = ARGV[2]
local function fmt(x) return string.format('%.6f', x) end

local raw = redis.call('HGETALL', st)
local h = {}
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local parked = tonumber(h['until'] or '0')
local fails = tonumber(h['fails'] or '0')
local opens = tonumber(h['opens'] or '0')
local level = tonumber(h['level'] or '0')
local is_probe = token ~= '' and h['probe_token'] == token
local open = h['breaker'] == 'open'
local function clean()
  if parked <= now and h['probe'] ~= '1' and fails == 0 and not open then return 1 end
  return 0
end
-- State is kept a day after its last change: long enough for any park, and no key lives for ever.
local function keep()
  local ttl = 86400 + math.ceil(math.max(parked - now, 0))
  redis.call('EXPIRE', st, ttl)
  redis.call('EXPIRE', failing, ttl)
end
local function breaker() if open then return 1 end return 0 end
-- Remember a failing URL (bounded: a website with thousands of failing URLs is counted by number).
local function remember()
  if url == '' then return 1 end
  if redis.call('SISMEMBER', failing, url) == 1 then return 0 end
  if redis.call('SCARD', failing) < 1024 then redis.call('SADD', failing, url) end
  return 1
end

if kind == 'ok' then
  if is_probe then
    local transition = 'recovered'
    if open then transition = 'closed' end
    redis.call('HDEL', st, 'probe', 'probe_token', 'probe_until', 'probe_since', 'fails', 'fail_since', 'opens',
               'breaker')
    redis.call('DEL', failing)
    h['probe'] = nil; fails = 0; open = false
    keep()
    return {transition, fmt(parked), fmt(now), 0, clean(), breaker()}
  end
  if fails > 0 and tonumber(ARGV[13] or '0') >= tonumber(h['fail_since'] or '0') then
    redis.call('HDEL', st, 'fails', 'fail_since')
    redis.call('DEL', failing)
    fails = 0
  end
  return {'', fmt(parked), fmt(now), 0, clean(), breaker()}
end

if kind == 'rate' then
  local ra = tonumber(ARGV[3])
  if parked > now and not is_probe then
    -- Sent before the current park: same incident. Its Retry-After may only lengthen the park.
    if ra >= 0 and now + ra > parked then
      parked = now + ra
      redis.call('HSET', st, 'until', fmt(parked))
      keep()
      return {'parked', fmt(parked), fmt(now), level, 0, breaker()}
    end
    return {'', fmt(parked), fmt(now), level, 0, breaker()}
  end
  if now - tonumber(h['last'] or '0') > tonumber(ARGV[7]) then level = 0 end
  local wait
  if ra >= 0 then
    wait = ra
  else
    wait = math.min(tonumber(ARGV[4]) * math.pow(tonumber(ARGV[5]), math.min(level, 64)), tonumber(ARGV[6]))
    wait = wait * tonumber(ARGV[8])
    level = level + 1
  end
  parked = math.max(parked, now + wait)
  if ra >= 0 then
    -- The website said when to come back: no probe needed (one may still be wanted by the breaker).
    redis.call('HSET', st, 'until', fmt(parked), 'level', level, 'last', fmt(now))
  else
    -- Backoff: one probe first after the park, so the next incident is measured from one request.
    redis.call('HSET', st, 'until', fmt(parked), 'level', level, 'last', fmt(now), 'probe', '1',
               'probe_since', fmt(parked))
  end
  redis.call('HDEL', st, 'probe_token', 'probe_until')
  keep()
  return {'parked', fmt(parked), fmt(now), level, 0, breaker()}
end

-- kind == 'fail'
if open and not is_probe then
  -- A download that started before the breaker opened: same incident (its URL is known to fail).
  remember()
  keep()
  return {'', fmt(parked), fmt(now), fails, 0, breaker()}
end
local transition
if is_probe then
  if open and remember() == 0 then
    -- The probe was a URL known to fail (a broken page retried): it says nothing about the
    -- website. No longer cooling; the next request (another URL, if any) may be the probe.
    redis.call('HDEL', st, 'probe_token', 'probe_until')
    redis.call('HSET', st, 'probe_since', fmt(now))
    keep()
    return {'inconclusive', fmt(parked), fmt(now), opens, 0, breaker()}
  end
  opens = opens + 1
  transition = 'reopened'
else
  if remember() == 0 then
    -- A URL already in the streak (a retry, or a requeued copy): not a new failure.
    return {'', fmt(parked), fmt(now), fails, 0, breaker()}
  end
  fails = fails + 1
  if fails == 1 then redis.call('HSET', st, 'fail_since', fmt(now)) end
  if fails < tonumber(ARGV[9]) then
    redis.call('HSET', st, 'fails', fails)
    keep()
    return {'failed', fmt(parked), fmt(now), fails, 0, breaker()}
  end
  opens = 1
  transition = 'opened'
end
local cool = math.min(tonumber(ARGV[10]) * math.pow(tonumber(ARGV[11]), opens - 1), tonumber(ARGV[12]))
parked = math.max(parked, now + cool)
redis.call('HSET', st, 'until', fmt(parked), 'opens', opens, 'breaker', 'open', 'probe', '1', 'fails', 0,
           'probe_since', fmt(parked))
redis.call('HDEL', st, 'probe_token', 'probe_until')
keep()
open = true
return {transition, fmt(parked), fmt(now), opens, 0, breaker()}
