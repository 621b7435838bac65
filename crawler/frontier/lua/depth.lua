-- depth.lua: the per-website depth index, kept by every script that moves
-- requests in or out of a queue (push.lua, pop.lua, release.lua). Not a
-- script of its own: crawler.lua_source puts it where a script says
-- "-- @include depth.lua" (Redis scripts cannot import each other).
--
-- Expects  nothing; the including script passes its keys to add_depths.
-- Defines  add_depths(depths, queued, delta, empty): for each website of the
--          table `delta` (website -> change of its queue's size), adds the
--          change to its entry in the zset `depths` (website -> queued
--          requests), or removes the entry when `empty[website]` (its queue
--          is now empty); adds the sum of the changes, plus `counted` (changes
--          the caller already made to `depths` itself; nil: 0), to the
--          string `queued`.
--          One call per website touched and one for the total: the scripts
--          already know both numbers, so the index costs no extra reads.
--          (Reading the entries with one ZMSCORE and writing them with one
--          ZADD costs as much: Redis formats each score read with '%.17g'.)
--          Numbers go to Redis as '%d' strings: a Lua number is formatted
--          with '%.17g', a measurable share of a script's time.
local function add_depths(depths, queued, delta, empty, counted)
  local total = counted or 0
  for site, n in pairs(delta) do
    total = total + n
    if empty[site] then
      redis.call('ZREM', depths, site)
    elseif n ~= 0 then
      redis.call('ZINCRBY', depths, string.format('%d', n), site)
    end
  end
  if total ~= 0 then redis.call('INCRBY', queued, string.format('%d', total)) end
end
