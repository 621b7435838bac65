-- Adaptive slow-down: add one worker's responses to the website's current window; when the
-- window closes, judge it against the website's own baseline and change its effective rate.
--
-- KEYS[1]  adaptive state hash <p>:pol:{W}:adapt (start, n, lat, err: the open window;
--          base_lat, base_err: baseline; rate: effective requests per second, absent: no limit;
--          ceiling: the observed rate before the first slow-down)
-- ARGV[1]  responses to add          ARGV[2]  their summed latency (seconds)   ARGV[3]  errors among them
-- ARGV[4]  window seconds            ARGV[5]  least responses a window needs to be judged
-- ARGV[6]  latency factor            ARGV[7]  error margin
-- ARGV[8]  decrease multiplier       ARGV[9]  increase multiplier              ARGV[10] floor, requests/s
-- ARGV[11] baseline smoothing alpha (weight of a new healthy window)
--
-- Returns {change, rate, window mean latency, baseline latency, window error rate, baseline error
-- rate}, numbers as strings. change: "" (no window closed, or nothing changed), "slowed" (a worse
-- window: rate lowered), "raised" (a healthy window while slowed: rate raised), "restored" (the
-- rate is back at the ceiling: limit lifted, rate "0").
-- The rule: a window is worse when its mean latency >= factor x baseline latency, or its error
-- rate >= baseline error rate + margin. Worse: rate = max(floor, decrease x min(rate, observed
-- rate)); the baseline is kept. Healthy: the baseline moves towards the window (alpha); a rate in
-- force is multiplied by increase, and lifted once it reaches the ceiling.

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local st = KEYS[1]
local function fmt(x) return string.format('%.6f', x) end

local h = {}
local raw = redis.call('HGETALL', st)
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local start = tonumber(h['start'] or tostring(now))
local n = tonumber(h['n'] or '0') + tonumber(ARGV[1])
local lat = tonumber(h['lat'] or '0') + tonumber(ARGV[2])
local err = tonumber(h['err'] or '0') + tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local rate = tonumber(h['rate'] or '0')
redis.call('EXPIRE', st, 86400)

if now - start < window or n < tonumber(ARGV[5]) then
  redis.call('HSET', st, 'start', fmt(start), 'n', n, 'lat', fmt(lat), 'err', err)
  return {'', fmt(rate), '0', h['base_lat'] or '0', '0', h['base_err'] or '0'}
end

-- The window closes: judge it, then open the next one.
local mean = lat / n
local erate = err / n
local observed = n / (now - start)
redis.call('HSET', st, 'start', fmt(now), 'n', 0, 'lat', 0, 'err', 0)
local base_lat = tonumber(h['base_lat'] or '-1')
local base_err = tonumber(h['base_err'] or '0')
local change = ''
if base_lat < 0 then
  -- The first judged window is the baseline.
  base_lat = mean
  base_err = erate
elseif mean >= tonumber(ARGV[6]) * base_lat or erate >= base_err + tonumber(ARGV[7]) then
  local from = observed
  if rate > 0 and rate < from then from = rate end
  if rate <= 0 then redis.call('HSET', st, 'ceiling', fmt(observed)) end
  local lowered = math.max(tonumber(ARGV[10]), tonumber(ARGV[8]) * from)
  if rate <= 0 or lowered < rate then change = 'slowed' end  -- at the floor already: no change
  rate = lowered
else
  local a = tonumber(ARGV[11])
  base_lat = (1 - a) * base_lat + a * mean
  base_err = (1 - a) * base_err + a * erate
  if rate > 0 then
    rate = rate * tonumber(ARGV[9])
    if rate >= tonumber(h['ceiling'] or '0') then
      rate = 0
      change = 'restored'
      redis.call('HDEL', st, 'ceiling')
    else
      change = 'raised'
    end
  end
end
redis.call('HSET', st, 'base_lat', fmt(base_lat), 'base_err', fmt(base_err), 'rate', fmt(rate))
return {change, fmt(rate), fmt(mean), fmt(base_lat), fmt(erate), fmt(base_err)}
