-- Byte budget: settle a download's reservations to the bytes it really took.
--
-- The reserved entries (its reservation and its draws, or a lease's) leave the
-- in-flight set and the true size enters the settled log, scored with the
-- settle time (after the last byte arrived), so it counts for one window from
-- now. A size above the reservations is debt that later reservations wait
-- for; below them, the difference is free at once. If the download held the
-- overdraft token, the token stays busy until one window from now.
--
-- Sizes are learned per website from the last 32 settled downloads (robots.txt
-- and stopped downloads are not sent): the estimate is their q-quantile, so a
-- few huge pages among small ones do not inflate it; the exposure (what a
-- download may take without the overdraft token, see reserve.lua) is the
-- largest of the last 256 downloads, forgotten 256 downloads later.
--
-- KEYS[1]  <prefix>:bb:{<website>}:log       sorted set, settled entries
-- KEYS[2]  <prefix>:bb:{<website>}:inflight  sorted set, granted, not settled
-- KEYS[3]  <prefix>:bb:{<website>}:state     hash (see reserve.lua)
-- KEYS[4]  <prefix>:bb:{<website>}:cum       sorted set (see reserve.lua, log.lua)
-- ARGV[1]  members returned by reserve.lua / draw.lua, comma-separated ("" = none);
--          "<member>@<time>": its bytes had all arrived by that Redis time;
--          "~<bytes>@<time>" (not a member): the next <bytes> of the download,
--          in order, had all arrived by that Redis time (the worker's arrival
--          marks of a download settled on its own; its members then come
--          without times); a mark without a time dates nothing
-- ARGV[2]  bytes to count now (integer >= 0)
-- ARGV[3]  window length in seconds
-- ARGV[4]  reservation expiry in seconds (for the key TTL)
-- ARGV[5]  holder: id of the download ("" = none); releases the token it holds
-- ARGV[6]  estimate quantile q in [0, 1]
-- ARGV[7..] sizes to learn from (integers; < 0 = learn nothing); a lease
--          settles the sizes of all its downloads at once
-- Returns  {now, used}  as strings

-- @include log.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bytes = tonumber(ARGV[2])
local window = tonumber(ARGV[3])

-- The state hash: one HMGET, one HSET at the end.
local FIELDS = {'used', 'seq', 'cum', 'od_holder', 'sizes', 'exposure', 'exposure_age', 'learned'}
local state = {}
do
  local values = redis.call('HMGET', KEYS[3], unpack(FIELDS))
  for i, f in ipairs(FIELDS) do
    state[f] = values[i]
  end
end
local update = {}
local used = tonumber(state.used or '0')
local seq = tonumber(state.seq or '0')
local covered = 0
local ended = {}  -- {time, bytes} of members whose bytes had all arrived by that time
for item in string.gmatch(ARGV[1], '[^,]+') do
  local member, at = string.match(item, '^([^@]+)@(.+)$')
  if not member then
    member = item
  end
  if string.byte(member, 1) == 126 then  -- '~<bytes>': an arrival mark, nothing reserved
    local marked = tonumber(string.sub(member, 2))
    if at and tonumber(at) and marked then
      ended[#ended + 1] = {tonumber(at), marked}
    end
  else
    local reserved = tonumber(string.match(member, ':(%d+)$'))
    covered = covered + reserved
    -- Still in flight, or moved to the log when it expired: either way it is
    -- still counted in `used` and is replaced by the true size. Already gone
    -- from the window: nothing to take back.
    if redis.call('ZREM', KEYS[2], member) == 1 then
      used = used - reserved
    elseif redis.call('ZREM', KEYS[1], member) == 1 then
      used = used - reserved
      log_remove({member})
    end
    if at then
      ended[#ended + 1] = {tonumber(at), reserved}
    end
  end
end
-- Bytes count for one window after they arrived: those of a member that
-- had all arrived earlier (a long download's first increments) from then,
-- the rest from now.
local rest = bytes
local entries = {}
for _, e in ipairs(ended) do
  if e[2] <= rest then
    rest = rest - e[2]
    if e[1] > now - window then
      seq = seq + 1
      entries[#entries + 1] = {math.min(e[1], now), seq .. ':' .. e[2]}
      used = used + e[2]
    end
  end
end
if rest > 0 then
  seq = seq + 1
  entries[#entries + 1] = {now, seq .. ':' .. rest}
  used = used + rest
end
if #entries > 0 then
  update[#update + 1] = 'cum'
  update[#update + 1] = log_add(entries, tonumber(state.cum or '0'))
  update[#update + 1] = 'seq'
  update[#update + 1] = seq
end
if used < 0 then
  used = 0
end
update[#update + 1] = 'used'
update[#update + 1] = used

-- The token's holder is done: if it ran past what it reserved, no other
-- download may do so until its bytes have left the window; if not, at once.
if ARGV[5] ~= '' and state.od_holder == ARGV[5] then
  local busy = now
  if bytes > covered then
    busy = now + window
  end
  for _, v in ipairs({'od_holder', '', 'od_until', busy, 'od_room', 0}) do
    update[#update + 1] = v
  end
end

-- The exposure: the largest size of the last 256 downloads (kept as the
-- record and its age, since the list holds 32), so a website whose big
-- pages are rare still counts with them.
local xmax = tonumber(state.exposure or '0')
local xage = tonumber(state.exposure_age or '0')
local fresh = {}
for i = 7, #ARGV do
  local x = tonumber(ARGV[i])
  if x >= 0 then
    -- Kept as the caller's text when whole: turning numbers into text is what costs most here.
    local whole = math.floor(x)
    fresh[#fresh + 1] = whole == x and ARGV[i] or whole
    if x >= xmax then
      xmax, xage = x, 0
    else
      xage = xage + 1
    end
  end
end
local new = #fresh
if new > 0 then
  -- The last 32 sizes: the stored ones, then the new ones (a lease sends up to
  -- BYTE_BUDGET_LEASE_DOWNLOADS at once: copied, not shifted one by one).
  local all = {}
  if new < 32 then
    for x in string.gmatch(state.sizes or '', '[^,]+') do
      all[#all + 1] = x
    end
  end
  for i = 1, new do
    all[#all + 1] = fresh[i]
  end
  local sizes = {}
  for i = math.max(#all - 31, 1), #all do
    sizes[#sizes + 1] = all[i]
  end
  local sorted = {}
  for i = 1, #sizes do
    sorted[i] = tonumber(sizes[i])
  end
  table.sort(sorted)
  local k = math.max(math.ceil(tonumber(ARGV[6]) * #sorted), 1)
  if xage >= 256 then
    xmax, xage = sorted[#sorted], 0
  end
  local count = tonumber(state.learned or '0')
  for _, v in ipairs({'sizes', table.concat(sizes, ','), 'estimate', sorted[k], 'exposure', xmax,
                      'exposure_age', xage, 'learned', count + new}) do
    update[#update + 1] = v
  end
end
redis.call('HSET', KEYS[3], unpack(update))

local ttl = math.ceil((2 * window + tonumber(ARGV[4])) * 1000)
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
if written[4] then
  redis.call('PEXPIRE', KEYS[4], ttl)
end
return {tostring(now), tostring(used)}
