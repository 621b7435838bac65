-- Byte budget: draw more bytes for a download that runs past what it reserved.
--
-- A metered download draws from the website's budget as its bytes arrive
-- beyond its grant. A draw is one more in-flight entry (settled with the
-- download's reservation by settle.lua). When the budget has no room for it,
-- the download may go on as the website's one overdraft if the token is free
-- (no other download runs past the budget, none did within the last window and
-- used <= b); otherwise the draw is denied and the worker stops the download.
-- The holder of the token is never denied. See reserve.lua for the proof.
--
-- KEYS[1]  <prefix>:bb:{<website>}:log       sorted set, settled entries
-- KEYS[2]  <prefix>:bb:{<website>}:inflight  sorted set, granted, not settled
-- KEYS[3]  <prefix>:bb:{<website>}:state     hash (see reserve.lua)
-- KEYS[4]  <prefix>:bb:{<website>}:cum       sorted set (see reserve.lua, log.lua)
-- ARGV[1]  budget b in bytes per window (integer >= 0)
-- ARGV[2]  window length in seconds (float > 0)
-- ARGV[3]  bytes to draw (integer >= 1)
-- ARGV[4]  reservation expiry in seconds
-- ARGV[5]  holder: id of the download (for the overdraft token)
-- ARGV[6]  bytes the download has been covered for with this draw: a page
--          larger than the website's exposure raises it at once, so later
--          downloads reserve for it (or take turns with the token); one more
--          than twice as large (a surprise) also sets the sizes learned back
--          to 0, so downloads are exposed to the stop slack again (reserve.lua)
-- Returns  {1, member, now, overdraft}   drawn; overdraft = 1: the download holds the token
--          {0, "", now, used}            denied: stop the download
--          floats are returned as strings.

-- @include window.lua

local amount = math.max(math.floor(tonumber(ARGV[3])), 1)
local covered = tonumber(ARGV[6] or '0')
local expiry = tonumber(ARGV[4])
local exposure = tonumber(state.exposure or '0')
if covered > exposure then
  put('exposure', covered)
  put('exposure_age', 0)
  -- More than twice the largest page known: a surprise. The website's sizes
  -- are not known any more; downloads are exposed to the stop slack again
  -- until 256 more are learned (reserve.lua's TRUST).
  if covered > 2 * exposure and tonumber(state.learned or '0') > 0 then
    put('learned', 0)
  end
end
local holder = ARGV[5]
local overdraft = 0
if holder ~= '' and od_holder == holder and now < od_until then
  overdraft = 1
elseif budget > 0 and used + amount <= budget then
  overdraft = 0
elseif token_free and holder ~= '' then
  overdraft = 1
else
  finish(expiry)
  return {0, '', tostring(now), tostring(used)}
end
if overdraft == 1 then
  put('od_holder', holder)
  put('od_until', now + expiry)
end
local seq = tonumber(state.seq or '0') + 1
local member = seq .. ':' .. amount
redis.call('ZADD', KEYS[2], now + expiry, member)
put('seq', seq)
put('used', used + amount)
finish(expiry)
return {1, member, tostring(now), overdraft}
