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
-- had reserved and drawn; a part settled with an earlier date by settle.lua is
-- dated no earlier than its bytes arrived, >= s, so it was counted too). Hence
-- the window holds at most b bytes, plus the
-- bytes of the one download that holds the overdraft token (granted only while
-- used <= b, held until one window after that download ended): b + one response.
--
-- KEYS[1]  <prefix>:bb:{<website>}:log       sorted set, settled entries
-- KEYS[2]  <prefix>:bb:{<website>}:inflight  sorted set, granted, not settled
-- KEYS[3]  <prefix>:bb:{<website>}:state     hash: used, seq, cum, sizes, estimate,
--                                            learned, exposure, exposure_age,
--                                            warned_until, od_holder, od_until, od_room
-- KEYS[4]  <prefix>:bb:{<website>}:cum       sorted set, the settled entries by
--                                            bytes settled (log.lua): when a
--                                            denied download may try again
-- ARGV[1]  budget b in bytes per window (integer >= 0)
-- ARGV[2]  window length in seconds (float > 0)
-- ARGV[3]  bytes to reserve; 0 = use the learned estimate
-- ARGV[4]  default estimate in bytes (used until sizes have been learned)
-- ARGV[5]  reservation expiry in seconds: an unsettled reservation counts as
--          ended at grant + expiry (a crashed worker cannot hold the budget for ever)
-- ARGV[6]  retry delay in seconds when only in-flight downloads block
-- ARGV[7]  lease size in downloads L (1: no lease): reserve up to L * x bytes
--          for several downloads of one worker, capped at a quarter of the
--          room the budget has left beyond this download (at least 2 x)
-- ARGV[8]  holder: id of the download, for the overdraft token ("" = none)
-- ARGV[9]  1: this download must run as the overdraft (a page known to be
--          larger than b, or a retried stopped page of unknown size); it is
--          granted its full size while the token is free and used <= b
-- ARGV[10] stop slack in bytes: what a server may have pushed of a download
--          beyond what the worker read when it stops it (BYTE_BUDGET_STOP_SLACK)
-- Without the token a download reserves its exposure x (the largest learned
-- size); with it, its estimate n, when x does not fit and n does.
-- Returns  {1, member, now, per, granted, overdraft}  granted >= per bytes reserved,
--                                                   per for each download (more: a lease);
--                                                   overdraft = 1: holds the token
--          {0, not_before, now, n, warn, used, timed}
--                                                   denied; warn = 1 for the first
--                                                   denial of a window caused by the
--                                                   budget (log it once); timed = 1:
--                                                   not_before is when enough settled
--                                                   bytes leave the window (or the token
--                                                   is free); 0: a guess (now + retry),
--                                                   downloads in flight or the token's
--                                                   holder may free room any moment
--          floats are returned as strings (Lua numbers would be truncated).

-- @include window.lua

-- Sizes learned (since the last surprise, draw.lua) from which a download of
-- unknown size reserves twice the largest size known instead of the stop slack.
local TRUST = 256
local known = tonumber(ARGV[3])
local holder = ARGV[8]
local expiry = tonumber(ARGV[5])
-- n: what a download is expected to take (the learned q-quantile, or its
-- known size); x: its exposure, what it may take without the token: the
-- largest size learned on the website (a server pushes a started response into
-- its socket buffers, megabytes of it, before a worker could stop it), or the
-- whole budget until 32 sizes are known. Twice the largest: a page a little
-- larger than any seen so far stays within it.
local n, x
if known > 0 then
  n, x = known, known
else
  n = tonumber(state.estimate or ARGV[4])
  if tonumber(state.learned or '0') < 32 then
    -- Too little known of the website's sizes: one download at a time (the
    -- token's), unless the budget is far above any page (>= 1024 default
    -- estimates, 32 MiB): then 32 default estimates (1 MiB) each.
    if budget >= 1024 * tonumber(ARGV[4]) then
      x = 32 * tonumber(ARGV[4])
    else
      x = budget + 1
    end
  else
    x = math.max(n, 2 * tonumber(state.exposure or '0'))
  end
  -- Capped at b / 4: a first guess never takes the whole window; a page above
  -- its reservation draws the rest (draw.lua) or runs as the overdraft.
  n = math.min(n, math.max(math.floor(budget / 4), 1))
end
n = math.max(math.floor(n), 1)
-- A download of unknown size may turn out larger than any page seen so far:
-- stopped, it costs what the server pushed before the stop, up to the stop
-- slack, so it is exposed to at least that until the website's sizes are
-- known: TRUST of them since the last surprise (a page more than twice the
-- largest known: draw.lua raises the exposure to it and sets learned to 0).
-- From then on a surprise is what the token absorbs (docs/byte-budget.md,
-- "What it assumes"): with the slack for ever, a website of small pages and
-- b under twice the slack would be served one download at a time for ever.
-- Where two exposures would not fit in b, downloads take turns with the
-- token: a second one could only be stopped, wasting what it cost.
if known <= 0 then
  if tonumber(state.learned or '0') < TRUST then
    x = math.max(x, tonumber(ARGV[10] or '0'))
  end
  if 2 * x > budget then
    x = budget + 1
  end
end
x = math.max(math.floor(x), n)

local function grant(amount, per, overdraft)
  local seq = tonumber(state.seq or '0') + 1
  local member = seq .. ':' .. amount
  redis.call('ZADD', KEYS[2], now + expiry, member)
  put('seq', seq)
  put('used', used + amount)
  if overdraft == 1 then
    -- od_room: what it reserved beyond its estimate (not a sign of exhaustion)
    put('od_holder', holder)
    put('od_until', now + expiry)
    put('od_room', amount - n)
  end
  finish(expiry)
  return {1, member, tostring(now), per, amount, overdraft}
end

local as_overdraft = budget > 0 and (n > budget or ARGV[9] == '1')
if not as_overdraft and budget > 0 and used + x <= budget then
  local granted = x
  -- A lease: up to L downloads' worth, but never more than a quarter of the
  -- room left beyond this download (capped, not refused: with exposures of
  -- megabytes, L of them rarely fit whole); worth it from two downloads on.
  local wish = math.min(x * (tonumber(ARGV[7] or '1') or 1), x + math.floor((budget - used - x) / 4))
  if wish >= 2 * x then
    granted = wish
  end
  return grant(granted, x, 0)
end
-- The token: one download at a time that may run past what it reserved.
-- It reserves what room there is, up to x: a page that fits in it did not run
-- past the budget, and the token is free again as soon as it is settled.
if token_free and holder ~= '' and (as_overdraft or used + n <= budget) then
  local amount = n
  if not as_overdraft then
    amount = math.max(n, math.min(x, budget - used))
  end
  return grant(amount, amount, 1)
end
-- Exhausted: no room for n even without the room a token holder took beyond
-- its estimate (then the wait is for the token, not for the budget).
local od_room = 0
if od_holder ~= '' and now < od_until then
  od_room = tonumber(state.od_room or '0')
end
local exhausted = budget <= 0 or used - od_room + n > budget

-- Denied: the earliest time enough settled bytes will have left the window:
-- one window after the first entry at which the bytes settled before and with
-- it reach what is needed (O(log L), see log.lua); when the settled bytes do
-- not, the retry delay.
local not_before = now + tonumber(ARGV[6])
local timed = 0
if budget <= 0 then
  not_before, timed = now + window, 1
elseif exhausted then
  local need = used + n - budget
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if #first > 0 then
    local before_first = tonumber(first[2]) - size_of(first[1])
    local hit = redis.call('ZRANGEBYSCORE', KEYS[4], before_first + need, '+inf', 'LIMIT', 0, 1)
    if #hit > 0 then
      local at = redis.call('ZSCORE', KEYS[1], hit[1])
      if at then
        not_before, timed = tonumber(at) + window, 1
      end
    end
  end
end
if not exhausted and od_holder == '' and od_until > not_before then
  not_before, timed = od_until, 1  -- room for it, but only as the overdraft: when the token is free
end
local warn = 0
local warned_until = tonumber(state.warned_until or '0')
if exhausted and now >= warned_until then
  put('warned_until', now + window)
  warn = 1
end
finish(expiry)
return {0, tostring(not_before), tostring(now), n, warn, tostring(used), timed}
