-- Pop up to N requests from the websites that may be served now, fairly:
-- websites waiting longest come first, each gets an equal share (the first
-- N mod #websites of them one more, so never more than N in all), and a
-- website served here goes to the back of the line.
--
-- Each request popped is leased to the worker (lua/leases.lua): recorded in
-- its pops hash as '<pop id>.<i>' until the worker acknowledges it (ARGV
-- below, with a later call); the worker's lease is renewed here. Expired
-- leases of dead workers go back to their queues first. A reply lost to a
-- timeout is not lost work: the worker names the pops whose reply it never
-- got, and their requests are delivered again. A pop id run twice (the
-- client retried it) returns what it recorded the first time.
--
-- KEYS[1]  sites zset: website -> time it may next be served
-- KEYS[2]  not-before zset: website -> not-before time
-- KEYS[3]  workers zset: worker id -> last time it was busy
-- KEYS[4]  this worker's pops hash: '<pop id>.<i>' -> the request (leases.lua)
-- KEYS[5]  leases zset: worker id -> lease deadline
-- KEYS[6]  depths zset: website -> queued requests (depth.lua: a pop
--          removes the entries of the queues it empties and leaves the rest
--          to the worker, which sends what it popped with a later call)
-- KEYS[7]  queued counter: total queued requests (depth.lua)
-- ARGV[1]  queue key prefix: the queue of website W is ARGV[1] .. W. These
--          keys (and other workers' pops hashes, ARGV[6] .. worker) are not
--          in KEYS because which are needed is only known here; they share
--          the hash tag of KEYS, so one cluster slot.
-- ARGV[2]  N, the most requests to return (besides those delivered again)
-- ARGV[3]  worker id
-- ARGV[4]  pop id ('' to record nothing)
-- ARGV[5]  lease seconds (0: no lease; the worker acknowledges on receipt)
-- ARGV[6]  pops hash key prefix (a worker's hash is ARGV[6] .. worker id)
-- ARGV[7]  A, then A fields acknowledged (outcome processed: forgotten)
-- ARGV[7 + A + 1]  L, then L pairs (pop id, N asked) whose reply never arrived
-- return   {now, websites with work, earliest time a website becomes ready
--           (or -1), pop ids of the L found (comma-separated), requests
--           reclaimed from expired leases, G, then website, field, member
--           per request, then the G websites whose queue this pop found
--           empty}; times are strings
-- @include depth.lua
-- @include leases.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[2])
local pop_id = ARGV[4]
local lease = tonumber(ARGV[5])
local now_s = string.format('%.17g', now)  -- formatted once, not once per website
local out = {0, 0, 0, 0, 0, 0}  -- the reply: its first six values are set at the end
local function recorded(id, max)
  if redis.call('HEXISTS', KEYS[4], id .. '.1') == 0 then return 0 end
  local fields = {}
  for i = 1, max do fields[i] = id .. string.format('.%d', i) end
  local got = 0
  for j = 1, max, 4000 do
    local recs = redis.call('HMGET', KEYS[4], unpack(fields, j, math.min(j + 3999, max)))
    for k = 1, #recs do
      if not recs[k] then return got end
      local e = lease_entry(recs[k])
      out[#out + 1] = e[1]
      out[#out + 1] = fields[j + k - 1]
      out[#out + 1] = e[2]
      got = got + 1
    end
  end
  return got
end
local acks = tonumber(ARGV[7])
for j = 8, 7 + acks, 4000 do redis.call('HDEL', KEYS[4], unpack(ARGV, j, math.min(j + 3999, 7 + acks))) end
local base = 7 + acks + 1
local found = {}
for i = 1, tonumber(ARGV[base]) do
  local id = ARGV[base + 2 * i - 1]
  if recorded(id, tonumber(ARGV[base + 2 * i])) > 0 then found[#found + 1] = id end
end
local delta = {}
local reclaimed = reclaim(KEYS[5], KEYS[1], KEYS[2], ARGV[1], ARGV[6], now, 10, delta)
local again = pop_id ~= '' and recorded(pop_id, n) > 0
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local sites = again and {} or redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, n)
local popped = 0
local gone = {}
if #sites > 0 then
  local share = math.floor(n / #sites)
  local extra = n % #sites
  local wants = {string.format('%d', share), string.format('%d', share + 1)}  -- a Lua number would be formatted per call
  local record = {}
  -- A queue that gave fewer than asked is empty. Whether those that gave all
  -- they were asked still hold more is one EXISTS for all of them (it counts
  -- the keys that exist), then one per queue only when some are empty. The
  -- websites served go to the back of the line with one ZADD XX; the emptied
  -- ones leave the line and the depth index with one ZREM each.
  local busy, full = {}, {}
  local no, nr, nf = #out, 0, 0  -- lengths of out, record and full ('#t' is a search each time)
  for i, site in ipairs(sites) do
    local want = share + (i <= extra and 1 or 0)
    local key = ARGV[1] .. site
    local got = redis.call('ZPOPMIN', key, wants[want - share + 1])
    for j = 1, #got, 2 do
      popped = popped + 1
      local field, member = pop_id .. '.' .. decimal(popped), got[j]
      out[no + 1], out[no + 2], out[no + 3] = site, field, member
      record[nr + 1], record[nr + 2] = field, lease_record(site, member, got[j + 1])
      no, nr = no + 3, nr + 2
    end
    if #got == 2 * want then
      nf = nf + 1
      full[nf] = key
      busy[2 * nf - 1], busy[2 * nf] = now_s, site
    else
      gone[#gone + 1] = site
    end
  end
  local exist = 0
  for j = 1, nf, 4000 do exist = exist + redis.call('EXISTS', unpack(full, j, math.min(j + 3999, nf))) end
  if exist < nf then
    local still = {}
    for j = 2, #busy, 2 do
      if redis.call('EXISTS', full[j / 2]) == 1 then
        still[#still + 1] = now_s
        still[#still + 1] = busy[j]
      else
        gone[#gone + 1] = busy[j]
      end
    end
    busy = still
  end
  for j = 1, #busy, 4000 do redis.call('ZADD', KEYS[1], 'XX', unpack(busy, j, math.min(j + 3999, #busy))) end
  for j = 1, #gone, 4000 do
    redis.call('ZREM', KEYS[1], unpack(gone, j, math.min(j + 3999, #gone)))
    redis.call('ZREM', KEYS[6], unpack(gone, j, math.min(j + 3999, #gone)))
  end
  if popped > 0 then
    redis.call('ZADD', KEYS[3], now_s, ARGV[3])
    if pop_id ~= '' then
      for j = 1, #record, 4000 do redis.call('HSET', KEYS[4], unpack(record, j, math.min(j + 3999, #record))) end
    end
  end
end
-- What reclaim() put back in a queue this pop then emptied counts in the
-- total only: the queue's index entry is gone (its depth is 0).
local counted = -popped
for _, site in ipairs(gone) do
  counted = counted + (delta[site] or 0)
  delta[site] = nil
end
add_depths(KEYS[6], KEYS[7], delta, counted)
renew(KEYS[5], KEYS[4], ARGV[3], now, lease, popped > 0 and pop_id ~= '')
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
out[1], out[2] = string.format('%.6f', now), redis.call('ZCARD', KEYS[1])
out[3] = nxt[2] and string.format('%.6f', tonumber(nxt[2])) or '-1'
out[4], out[5], out[6] = table.concat(found, ','), reclaimed, #gone
for _, v in ipairs(gone) do out[#out + 1] = v end
return out
