-- Push a batch of requests into the frontier, deduplicating atomically:
-- a fingerprint is added to the seen set only together with its request.
--
-- KEYS[1]  seen key (the exact set, or the base of the Bloom filter's keys)
-- KEYS[2]  sites zset: website -> time (Redis TIME, s) it may next be served;
--          holds exactly the websites whose queue is not empty
-- KEYS[3]  not-before zset: website -> time before which it must not be served
-- KEYS[4]  sequence counter (FIFO order within a priority)
-- KEYS[5]  workers zset: worker id -> last time it was busy
-- KEYS[6..] one queue zset per website, referenced by index below
-- ARGV[1]  worker id
-- ARGV[2]  number of requests N, then N groups of 7 values:
--          queue KEYS index, website, fingerprint,
--          mode (0 = dedupe, 1 = dont_filter: store and mark seen,
--                2 = requeue: store, leave the seen set alone),
--          queue score (-priority), not-before time (0 = none),
--          and the encoded request
-- ARGV[3 + 7N]  the seen spec (seen_lib.lua; absent or "" = exact set)
-- return   {stored flags (1 stored, 0 duplicate) ..., sites with work}
-- @include seen_lib.lua
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[2])
local seen = seen_open(KEYS[1], ARGV[3 + n * 7], now)
local seq = redis.call('INCRBY', KEYS[4], n) - n
local out = {}
for i = 0, n - 1 do
  local base = 3 + i * 7
  local qkey = KEYS[tonumber(ARGV[base])]
  local site = ARGV[base + 1]
  local fp = ARGV[base + 2]
  local mode = ARGV[base + 3]
  local stored = 1
  if mode == '0' then
    stored = seen_add(seen, fp)
  elseif mode == '1' then
    seen_mark(seen, fp)
  end
  if stored == 1 then
    local member = string.format('%016x', seq + i) .. ':' .. fp .. ':' .. ARGV[base + 6]
    redis.call('ZADD', qkey, tonumber(ARGV[base + 4]), member)
    local until_t = tonumber(ARGV[base + 5])
    if until_t > 0 then
      redis.call('ZADD', KEYS[3], 'GT', until_t, site)
      redis.call('ZADD', KEYS[2], 'GT', until_t, site)
    else
      local ready = now
      local nb = redis.call('ZSCORE', KEYS[3], site)
      if nb and tonumber(nb) > ready then ready = tonumber(nb) end
      redis.call('ZADD', KEYS[2], 'NX', ready, site)
    end
  end
  out[#out + 1] = stored
end
seen_close(seen)
redis.call('ZADD', KEYS[5], now, ARGV[1])
out[#out + 1] = redis.call('ZCARD', KEYS[2])
return out
