-- Pop up to N seeds from the head of a seed list, atomically. A seed longer
-- than MAX bytes comes back cut to its first 200 bytes, so an oversized seed
-- never reaches a worker's memory (the decoding gate refuses it by its size),
-- and it ends the batch: one call copies at most one oversized seed, so a
-- list full of them cannot make one call outlast the client's socket timeout.
--
-- KEYS[1]  seed list (scrapy-redis's redis_key)
-- ARGV[1]  N, the most seeds to pop
-- ARGV[2]  MAX, the largest seed returned whole (bytes)
-- return   {seeds left in the list, size, seed, size, seed, ...}: each seed's
--          true size in bytes and the seed (its first 200 bytes when size > MAX)
local n = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local out = {0}
for _ = 1, n do
  local seed = redis.call('LPOP', KEYS[1])
  if not seed then break end
  out[#out + 1] = #seed
  if #seed > max then
    out[#out + 1] = string.sub(seed, 1, 200)
    break
  end
  out[#out + 1] = seed
end
out[1] = redis.call('LLEN', KEYS[1])
return out
