-- Pop up to N requests from the websites that may be served now, fairly:
-- websites waiting longest come first, each gets an equal share (the first
-- N mod #websites of them one more, so never more than N in all), and a
-- website served here goes to the back of the line.
--
-- What a pop returns is also recorded under its pop id in the worker's pops
-- hash until the worker acknowledges it (its next pop), so a reply lost to a
-- timeout is not lost work: the worker names the pop ids whose reply it
-- never got, and they are delivered again (or requeued by release.lua when
-- it closes). A pop id run twice (the client retried it) returns everything
-- recorded under it.
--
-- KEYS[1]  sites zset: website -> time it may next be served
-- KEYS[2]  not-before zset: website -> not-before time
-- KEYS[3]  workers zset: worker id -> last time it was busy
-- KEYS[4]  this worker's pops hash: pop id -> cjson [[website, member, score], ...]
-- KEYS[5]  depths zset: website -> queued requests (depth.lua)
-- KEYS[6]  queued counter: total queued requests (depth.lua)
-- ARGV[1]  queue key prefix: the queue of website W is ARGV[1] .. W. These
--          keys are not in KEYS because which websites are ready is only
--          known here; they share the hash tag of KEYS, so one cluster slot.
-- ARGV[2]  N, the most requests to return (besides those delivered again)
-- ARGV[3]  worker id
-- ARGV[4]  pop id ('' to record nothing)
-- ARGV[5]  A, then A pop ids whose reply arrived (acknowledged: forgotten)
-- ARGV[5 + A + 1]  L, then L pop ids whose reply never arrived (delivered again)
-- return   {now, websites with work, earliest time a website becomes ready
--           (or -1), pop ids of the L found (comma-separated),
--           website, member, website, member, ...}; times are strings

-- @include depth.lua

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[2])
local pop_id = ARGV[4]
local out = {}
local record = {}
local function deliver(entries)
  for _, e in ipairs(entries) do
    out[#out + 1] = e[1]
    out[#out + 1] = e[2]
    record[#record + 1] = e
  end
end
local acks = tonumber(ARGV[5])
for i = 1, acks do redis.call('HDEL', KEYS[4], ARGV[5 + i]) end
local base = 5 + acks + 1
local found = {}
for i = 1, tonumber(ARGV[base]) do
  local id = ARGV[base + i]
  local old = redis.call('HGET', KEYS[4], id)
  if old then
    deliver(cjson.decode(old))
    redis.call('HDEL', KEYS[4], id)
    found[#found + 1] = id
  end
end
if pop_id ~= '' then
  local again = redis.call('HGET', KEYS[4], pop_id)
  if again then deliver(cjson.decode(again)) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local sites = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, n)
local popped = 0
local delta, empty = {}, {}
if #sites > 0 then
  local share = math.floor(n / #sites)
  local extra = n % #sites
  for i, site in ipairs(sites) do
    local qkey = ARGV[1] .. site
    local got = redis.call('ZPOPMIN', qkey, share + (i <= extra and 1 or 0))
    for j = 1, #got, 2 do
      out[#out + 1] = site
      out[#out + 1] = got[j]
      record[#record + 1] = {site, got[j], tonumber(got[j + 1])}
      popped = popped + 1
    end
    delta[site] = -(#got / 2)
    if redis.call('EXISTS', qkey) == 1 then
      redis.call('ZADD', KEYS[1], 'XX', now, site)
    else
      redis.call('ZREM', KEYS[1], site)
      empty[site] = true
    end
  end
  add_depths(KEYS[5], KEYS[6], delta, empty)
  if popped > 0 then redis.call('ZADD', KEYS[3], now, ARGV[3]) end
end
if pop_id ~= '' and #record > 0 then
  redis.call('HSET', KEYS[4], pop_id, cjson.encode(record))
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local result = {string.format('%.6f', now), redis.call('ZCARD', KEYS[1]),
                nxt[2] and string.format('%.6f', tonumber(nxt[2])) or '-1', table.concat(found, ',')}
for _, v in ipairs(out) do result[#result + 1] = v end
return result
