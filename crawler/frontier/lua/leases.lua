-- Included by pop.lua, status.lua and release.lua (not a script of its own;
-- they include depth.lua first): a worker's leased requests and their
-- return to their websites' queues, counted in the depth index.
--
-- A worker's pops hash (<p>:pops:<worker>) holds one field per request it
-- was given, '<pop id>.<i>' -> '<score> <length of website> <website>' ..
-- member (binary-safe: members hold raw fingerprints; written before that:
-- cjson [website, member, score], still read), until the worker
-- acknowledges it (its outcome processed, what it produced stored).
-- The leases zset (<p>:leases) holds worker -> deadline (Redis clock) for
-- every worker whose pops hash is not empty; each call of the worker renews
-- it. A worker past its deadline is dead: the first caller to see it puts
-- its requests back, so reclaiming costs O(expired requests), never a scan.

-- i (an integer >= 0) as decimal text. Below 100 without string.format,
-- whose sprintf is a measurable share of a pop (a field and a record per
-- request popped).
local DIGITS = {[0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'}
local function decimal(i)
  if i < 10 then return DIGITS[i] end
  if i < 100 then
    local units = i % 10
    return DIGITS[(i - units) / 10] .. DIGITS[units]
  end
  return string.format('%d', i)
end

-- The pops hash value of a request popped from website's queue with score
-- (the string ZPOPMIN gave).
local function lease_record(site, member, score)
  return score .. ' ' .. decimal(#site) .. ' ' .. site .. member
end

-- {website, member, score} of a pops hash value.
local function lease_entry(rec)
  if string.byte(rec, 1) == 91 then return cjson.decode(rec) end  -- '[': written before lease_record
  local a = string.find(rec, ' ', 1, true)
  local b = string.find(rec, ' ', a + 1, true)
  local len = tonumber(string.sub(rec, a + 1, b - 1))
  return {string.sub(rec, b + 1, b + len), string.sub(rec, b + len + 1), string.sub(rec, 1, a - 1)}
end

-- The request e = {website, member, score} back in its website's queue,
-- keeping its priority and the website's not-before; delta[website] counts
-- what was added (for add_depths).
local function requeue(sites_key, nb_key, qprefix, now, e, delta)
  local site = e[1]
  delta[site] = (delta[site] or 0) + redis.call('ZADD', qprefix .. site, e[3], e[2])
  local ready = now
  local nb = redis.call('ZSCORE', nb_key, site)
  if nb and tonumber(nb) > ready then ready = tonumber(nb) end
  redis.call('ZADD', sites_key, 'NX', ready, site)
end

-- Every request left in pops hash pkey back in its queue; the hash goes.
local function requeue_all(sites_key, nb_key, qprefix, now, pkey, delta)
  local n = 0
  for _, rec in ipairs(redis.call('HVALS', pkey)) do
    requeue(sites_key, nb_key, qprefix, now, lease_entry(rec), delta)
    n = n + 1
  end
  redis.call('DEL', pkey)
  return n
end

-- The requests of up to `limit` workers whose lease expired, back in their
-- queues; returns how many requests.
local function reclaim(leases_key, sites_key, nb_key, qprefix, pprefix, now, limit, delta)
  local n = 0
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', leases_key, '-inf', now, 'LIMIT', 0, limit)) do
    n = n + requeue_all(sites_key, nb_key, qprefix, now, pprefix .. w, delta)
    redis.call('ZREM', leases_key, w)
  end
  return n
end

-- The worker's lease: renewed to now + seconds while it holds requests,
-- gone when it holds none (or when leases are off: seconds = 0).
-- held: true when the caller knows the pops hash is not empty.
local function renew(leases_key, pkey, worker, now, seconds, held)
  if seconds > 0 and (held or redis.call('EXISTS', pkey) == 1) then
    redis.call('ZADD', leases_key, now + seconds, worker)
  else
    redis.call('ZREM', leases_key, worker)
  end
end
