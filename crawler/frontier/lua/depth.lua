-- depth.lua: the per-website depth index, kept by every script that moves
-- requests in or out of a queue (push.lua, pop.lua, release.lua). Not a
-- script of its own: store._script puts it where a script says
-- "-- @include depth.lua" (Redis scripts cannot import each other).
--
-- Expects  nothing; the including script passes its keys to set_depth.
-- Defines  set_depth(depths, queued, site, qkey): records the queue's size
--          ZCARD(qkey) as the website's depth in the zset `depths` (website ->
--          queued requests; removed at zero) and adjusts the total in the
--          string `queued` by the change; returns the depth. Absolute, not a
--          delta: a website's entry is right after any script touched it.
local function set_depth(depths, queued, site, qkey)
  local new = redis.call('ZCARD', qkey)
  local old = tonumber(redis.call('ZSCORE', depths, site) or '0')
  if new ~= old then
    redis.call('INCRBY', queued, new - old)
    if new > 0 then
      redis.call('ZADD', depths, new, site)
    else
      redis.call('ZREM', depths, site)
    end
  end
  return new
end
