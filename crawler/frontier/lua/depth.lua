-- depth.lua: the per-website depth index and the total, kept by the scripts
-- that move requests in or out of a queue (push.lua, pop.lua, release.lua,
-- status.lua). Not a script of its own: crawler.lua_source puts it where a
-- script says "-- @include depth.lua" (Redis scripts cannot import each other).
--
-- The total (a string) is exact: every script adds its own changes. The index
-- (a zset website -> queued requests) orders the websites `status` shows; it
-- is not read on the hot path. A pop does not write it: the worker keeps what
-- it popped per website and sends it with its next push, heartbeat or release
-- (pending below), where it nets out against what that script adds (a crawled
-- page's links mostly go to its own website): one ZINCRBY per website whose
-- count really changed, not two per request. So the index lags the queues by
-- the requests popped since each worker's last push or heartbeat (seconds).
-- A pop that empties a website's queue removes its entry (the queue says 0),
-- and tells the worker, which drops what it kept for that website; what
-- another worker kept from before is then stale, and cannot take the entry
-- below what this script adds. `status` reads the depth of each website it
-- shows from its queue (ZCARD).
--
-- Expects  nothing; the including script passes its keys.
-- Defines  read_pending(at) -> pending, next: ARGV[at] = P, then P pairs
--            (website, k): k requests a worker popped, not yet in the index
--            (pending[website] = -k)
--          add_depths(depths, queued, delta, counted, pending): adds to
--            the index each website's change, delta[website] (this script's
--            own, exact: requests it added) plus pending[website] (optional);
--            an entry that pending takes to 0 or less, or below delta, is
--            set to delta (removed at 0); adds the sum of delta, plus
--            `counted` (other changes of this script: nil for 0), to the
--            total.
--          Numbers go to Redis as '%d' strings: a Lua number is formatted
--          with '%.14g', a measurable share of a script's time.
local function read_pending(at)
  local pending = {}
  local p = tonumber(ARGV[at])
  for i = 1, p do
    local site = ARGV[at + 2 * i - 1]
    local k = ARGV[at + 2 * i]
    pending[site] = (pending[site] or 0) - (k == '1' and 1 or tonumber(k))  -- tonumber costs a strtod
  end
  return pending, at + 1 + 2 * p
end

local function add_depths(depths, queued, delta, counted, pending)
  local total = counted or 0
  for site, n in pairs(delta) do
    total = total + n
    local p = pending and pending[site]
    if p == nil and n ~= 0 then
      redis.call('ZINCRBY', depths, string.format('%d', n), site)
    end
  end
  if pending then
    for site, p in pairs(pending) do
      local own = delta[site] or 0
      if own + p ~= 0 then
        local now = tonumber(redis.call('ZINCRBY', depths, string.format('%d', own + p), site))
        if now <= 0 or now < own then
          -- below own: the entry was reset (its queue emptied) after these pops, which it counts already
          if own > 0 then redis.call('ZADD', depths, string.format('%d', own), site)
          else redis.call('ZREM', depths, site) end
        end
      end
    end
  end
  if total ~= 0 then redis.call('INCRBY', queued, string.format('%d', total)) end
end
