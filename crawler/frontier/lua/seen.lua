-- Ask, add or forget fingerprints of the seen set outside a push (the CLI,
-- benchmarks): the same functions push.lua uses.
--
-- KEYS[1]  seen key (as push.lua's KEYS[1])
-- ARGV[1]  the seen spec (seen_lib.lua; "" = exact set)
-- ARGV[2]  operation: "check", "add", "forget" or "count"
-- ARGV[3..] fingerprints (20 raw bytes; any other length: hex, as push.lua)
-- return   check: {1 seen / 0 not, ...}; add: {1 new / 0 seen before, ...};
--          forget: number forgotten; count: fingerprints stored
-- @include seen_lib.lua
local t = redis.call('TIME')
local seen = seen_open(KEYS[1], ARGV[1], tonumber(t[1]) + tonumber(t[2]) / 1000000)
local op = ARGV[2]
if op == 'count' then return seen_count(seen) end
local out = {}
for i = 3, #ARGV do
  if op == 'check' then
    out[#out + 1] = seen_check(seen, ARGV[i])
  elseif op == 'add' then
    out[#out + 1] = seen_add(seen, ARGV[i])
  elseif op == 'forget' then
    seen_forget(seen, ARGV[i])
  else
    return redis.error_reply('unknown operation ' .. op)
  end
end
seen_close(seen)
if op == 'forget' then return #ARGV - 2 end
return out
