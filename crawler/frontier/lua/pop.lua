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
-- KEYS[6]  depths zset: website -> queued requests (depth.lua)
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
--           reclaimed from expired leases, website, field, member, ...};
--           times are strings
-- @include depth.lua
-- @include leases.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[2])
local pop_id = ARGV[4]
local lease = tonumber(ARGV[5])
local now_s = string.format('%.17g', now)  -- formatted once, not once per website
local out = {}
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
local counted = 0  -- queue size changes already in the depth index (add_depths adds them to the total)
if #sites > 0 then
  local share = math.floor(n / #sites)
  local extra = n % #sites
  local record = {}
  -- A queue that gave fewer than asked is empty; one that gave all is asked
  -- (EXISTS) only when the depth index, updated here with ZINCRBY, does not
  -- already say it holds more: one call per website served, not two. An
  -- index that says more than the queue holds heals at the next pop (fewer
  -- than asked: empty). The websites served are moved to the back of the
  -- line with one ZADD XX; the emptied ones leave the line and the index
  -- with one ZREM each.
  local busy, gone = {}, {}
  for i, site in ipairs(sites) do
    local want = share + (i <= extra and 1 or 0)
    local got = redis.call('ZPOPMIN', ARGV[1] .. site, want)
    for j = 1, #got, 2 do
      popped = popped + 1
      local field = pop_id .. string.format('.%d', popped)  -- '%d': a number's own tostring is far slower
      out[#out + 1] = site
      out[#out + 1] = field
      out[#out + 1] = got[j]
      record[#record + 1] = field
      record[#record + 1] = lease_record(site, got[j], got[j + 1])
    end
    local k = #got / 2
    local change = (delta[site] or 0) - k  -- with what reclaim() put back in this queue
    delta[site] = nil
    counted = counted + change
    local more = false
    if k == want then
      if change ~= 0 and tonumber(redis.call('ZINCRBY', KEYS[6], string.format('%d', change), site)) > 0 then
        more = true
      else
        more = redis.call('EXISTS', ARGV[1] .. site) == 1
      end
    end
    if more then
      busy[#busy + 1] = now_s
      busy[#busy + 1] = site
    else
      gone[#gone + 1] = site
    end
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
add_depths(KEYS[6], KEYS[7], delta, {}, counted)
renew(KEYS[5], KEYS[4], ARGV[3], now, lease, popped > 0 and pop_id ~= '')
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local result = {string.format('%.6f', now), redis.call('ZCARD', KEYS[1]),
                nxt[2] and string.format('%.6f', tonumber(nxt[2])) or '-1', table.concat(found, ','), reclaimed}
for _, v in ipairs(out) do result[#result + 1] = v end
return result
