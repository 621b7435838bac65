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
-- KEYS[4]  this worker's pops hash: '<pop id>.<i>' -> cjson [website, member, score]
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
local out = {}
local function recorded(id, max)
  local got = 0
  for i = 1, max do
    local field = id .. '.' .. i
    local rec = redis.call('HGET', KEYS[4], field)
    if not rec then break end
    local e = cjson.decode(rec)
    out[#out + 1] = e[1]
    out[#out + 1] = field
    out[#out + 1] = e[2]
    got = got + 1
  end
  return got
end
local acks = tonumber(ARGV[7])
for i = 1, acks do redis.call('HDEL', KEYS[4], ARGV[7 + i]) end
local base = 7 + acks + 1
local found = {}
for i = 1, tonumber(ARGV[base]) do
  local id = ARGV[base + 2 * i - 1]
  if recorded(id, tonumber(ARGV[base + 2 * i])) > 0 then found[#found + 1] = id end
end
local delta, empty = {}, {}
local reclaimed = reclaim(KEYS[5], KEYS[1], KEYS[2], ARGV[1], ARGV[6], now, 10, delta)
local again = pop_id ~= '' and recorded(pop_id, n) > 0
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local sites = again and {} or redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, n)
local popped = 0
if #sites > 0 then
  local share = math.floor(n / #sites)
  local extra = n % #sites
  local record = {}
  for i, site in ipairs(sites) do
    local qkey = ARGV[1] .. site
    local got = redis.call('ZPOPMIN', qkey, share + (i <= extra and 1 or 0))
    for j = 1, #got, 2 do
      popped = popped + 1
      local field = pop_id .. '.' .. popped
      out[#out + 1] = site
      out[#out + 1] = field
      out[#out + 1] = got[j]
      record[#record + 1] = field
      record[#record + 1] = cjson.encode({site, got[j], tonumber(got[j + 1])})
    end
    delta[site] = (delta[site] or 0) - #got / 2
    if redis.call('EXISTS', qkey) == 1 then
      redis.call('ZADD', KEYS[1], 'XX', now, site)
    else
      redis.call('ZREM', KEYS[1], site)
      empty[site] = true
    end
  end
  if popped > 0 then
    redis.call('ZADD', KEYS[3], now, ARGV[3])
    if pop_id ~= '' then redis.call('HSET', KEYS[4], unpack(record)) end
  end
end
add_depths(KEYS[6], KEYS[7], delta, empty)
renew(KEYS[5], KEYS[4], ARGV[3], now, lease)
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local result = {string.format('%.6f', now), redis.call('ZCARD', KEYS[1]),
                nxt[2] and string.format('%.6f', tonumber(nxt[2])) or '-1', table.concat(found, ','), reclaimed}
for _, v in ipairs(out) do result[#result + 1] = v end
return result
