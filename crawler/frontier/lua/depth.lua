-- depth.lua: the per-website depth index, kept by every script that moves
-- requests in or out of a queue (push.lua, pop.lua, release.lua). Not a
-- script of its own: crawler.lua_source puts it where a script says
-- "-- @include depth.lua" (Redis scripts cannot import each other).
--
-- Expects  nothing; the including script passes its keys to add_depths.
-- Defines  add_depths(depths, queued, delta, empty[, old]): for each website of
--          the table `delta` (website -> change of its queue's size), adds the
--          change to its entry in the zset `depths` (website -> queued
--          requests), or removes the entry when `empty[website]` (its queue
--          is now empty); adds the sum of the changes to the string `queued`.
--          `old` (website -> its entry, false if none), when the caller read
--          the entries already, saves reading them again.
--          One ZMSCORE, one ZADD, one ZREM and one INCRBY whatever the number
--          of websites (the scripts already know the changes: the index costs
--          no extra reads per website).
local function add_depths(depths, queued, delta, empty, old)
  local total = 0
  local names, rem = {}, {}
  for site, n in pairs(delta) do
    total = total + n
    if empty[site] then
      rem[#rem + 1] = site
    elseif n ~= 0 then
      names[#names + 1] = site
    end
  end
  local ask = {}
  if old == nil then old = {} end
  for _, site in ipairs(names) do
    if old[site] == nil then ask[#ask + 1] = site end
  end
  for j = 1, #ask, 4000 do
    local hi = math.min(j + 3999, #ask)
    local got = redis.call('ZMSCORE', depths, unpack(ask, j, hi))
    for k = j, hi do old[ask[k]] = got[k - j + 1] and tonumber(got[k - j + 1]) or false end
  end
  local args = {}
  for _, site in ipairs(names) do
    local v = (old[site] or 0) + delta[site]
    -- a whole number as '%d': Redis would format a Lua number with '%.17g', far slower
    args[#args + 1] = v == math.floor(v) and string.format('%d', v) or v
    args[#args + 1] = site
  end
  for j = 1, #args, 4000 do redis.call('ZADD', depths, unpack(args, j, math.min(j + 3999, #args))) end
  for j = 1, #rem, 4000 do redis.call('ZREM', depths, unpack(rem, j, math.min(j + 3999, #rem))) end
  if total ~= 0 then redis.call('INCRBY', queued, string.format('%d', total)) end
end
