-- Pop up to N requests from the websites that may be served now, fairly:
-- websites waiting longest come first, each gets an equal share (the first
-- N mod #websites of them one more, so never more than N in all), and a
-- website served here goes to the back of the line.
--
-- KEYS[1]  sites zset: website -> time it may next be served
-- KEYS[2]  not-before zset: website -> not-before time
-- KEYS[3]  workers zset: worker id -> last time it was busy
-- ARGV[1]  queue key prefix: the queue of website W is ARGV[1] .. W. These
--          keys are not in KEYS because which websites are ready is only
--          known here; they share the hash tag of KEYS, so one cluster slot.
-- ARGV[2]  N, the most requests to return
-- ARGV[3]  worker id
-- return   {now, websites with work, earliest time a website becomes ready
--           (or -1), website, member, website, member, ...}; times are strings
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local sites = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, n)
local out = {}
if #sites > 0 then
  local share = math.floor(n / #sites)
  local extra = n % #sites
  for i, site in ipairs(sites) do
    local qkey = ARGV[1] .. site
    local got = redis.call('ZPOPMIN', qkey, share + (i <= extra and 1 or 0))
    for j = 1, #got, 2 do
      out[#out + 1] = site
      out[#out + 1] = got[j]
    end
    if redis.call('EXISTS', qkey) == 1 then
      redis.call('ZADD', KEYS[1], 'XX', now, site)
    else
      redis.call('ZREM', KEYS[1], site)
    end
  end
  if #out > 0 then redis.call('ZADD', KEYS[3], now, ARGV[3]) end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local result = {string.format('%.6f', now), redis.call('ZCARD', KEYS[1]),
                nxt[2] and string.format('%.6f', tonumber(nxt[2])) or '-1'}
for _, v in ipairs(out) do result[#result + 1] = v end
return result
