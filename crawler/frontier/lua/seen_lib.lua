-- Seen fingerprints, included by push.lua and seen.lua ("-- @include seen_lib.lua"):
-- an exact set, or a scalable Bloom filter in plain Redis strings, either one
-- optionally in rotating generations so that fingerprints expire
-- (docs/frontier.md "Deduplication").
--
-- seen_open(base, spec, now) -> s   base: the seen key (KEYS[1] of the caller)
--   spec ""                                     one exact set at base (the default)
--   spec "<exact|bloom>|cap|error|period|gens"  period > 0: gens generations of
--        period seconds each (keys base:g<n>); a fingerprint is remembered for
--        (gens - 1) * period to gens * period seconds after it was first stored
-- seen_add(s, fp)    -> 1 if fp was not seen (it is now), 0 if it was
-- seen_mark(s, fp)   marks fp seen without testing it (dont_filter requests)
-- seen_check(s, fp)  -> 1 if fp was seen, 0 if not
-- seen_forget(s, fp) un-marks fp: the next push of it is stored again
-- seen_count(s)      -> fingerprints stored (Bloom: counted at insertion)
-- seen_close(s)      writes back the Bloom counters; call once at the end
--
-- Bloom layout of one generation G: hash G:meta {f = filters, n = items in the
-- newest filter, t = items in all}; filter i is made of segments G:<i>:<j>,
-- each exactly 262,128 bytes (with Redis's 10 bytes of string header, one
-- 256 KiB allocation: memory is the filter's size, allocated when it is made).
-- Filter i holds cap * 2^i fingerprints at error * 2^-i (the chain stays below
-- 2 * error when it grows past cap). Bit positions come from the fingerprint
-- itself (hex, from a cryptographic hash) by double hashing: h1 + i * h2.
-- Forgotten fingerprints of a Bloom filter are kept in the exact set
-- base:forgotten until they are stored again.
local SEGMENT_BITS = 262128 * 8
local LN2 = math.log(2)

local function bloom_params(s, i)
  local cap = s.cap * 2 ^ i
  local err = s.err / 2 ^ i
  local segments = math.ceil(cap * -math.log(err) / (LN2 * LN2) / SEGMENT_BITS)
  local m = segments * SEGMENT_BITS
  local k = math.max(1, math.floor(-math.log(err) / LN2 + 0.5))  -- optimal for the unrounded size
  return cap, m, k, segments
end

local function seen_open(base, spec, now)
  local s = {base = base, bloom = false, gens = {base}, metas = {}, expire_at = nil}
  if spec == nil or spec == '' then return s end
  local mode, cap, err, period, ngen = string.match(spec, '^(%a+)|([^|]+)|([^|]+)|([^|]+)|([^|]+)$')
  s.bloom = mode == 'bloom'
  s.cap = tonumber(cap)
  s.err = tonumber(err)
  period = tonumber(period)
  ngen = tonumber(ngen)
  if period > 0 then
    local g = math.floor(now / period)
    s.gens = {}
    for i = 0, ngen - 1 do s.gens[#s.gens + 1] = base .. ':g' .. (g - i) end
    s.expire_at = math.ceil((g + ngen) * period) + 60
  end
  if s.bloom then s.forgotten = base .. ':forgotten' end
  return s
end

local function meta(s, gen)
  local m = s.metas[gen]
  if m == nil then
    local v = redis.call('HMGET', gen .. ':meta', 'f', 'n', 't')
    m = {f = tonumber(v[1]) or 0, n = tonumber(v[2]) or 0, t = tonumber(v[3]) or 0, dirty = false}
    s.metas[gen] = m
  end
  return m
end

local function hashes(fp)
  local h1 = #fp >= 24 and tonumber(string.sub(fp, 1, 12), 16)
  local h2 = h1 and tonumber(string.sub(fp, 13, 24), 16)
  if not h2 then
    local d = redis.sha1hex(fp)
    h1, h2 = tonumber(string.sub(d, 1, 12), 16), tonumber(string.sub(d, 13, 24), 16)
  end
  return h1, h2 * 2 + 1  -- odd: the k positions differ
end

-- true if every bit of fp is set in filter i of generation gen
local function bloom_test(s, gen, i, h1, h2)
  local _, m, k = bloom_params(s, i)
  for j = 0, k - 1 do
    local pos = (h1 + j * h2) % m
    local seg = math.floor(pos / SEGMENT_BITS)
    if redis.call('GETBIT', gen .. ':' .. i .. ':' .. seg, pos % SEGMENT_BITS) == 0 then return false end
  end
  return true
end

-- makes room: the newest generation's newest filter exists and is not full
local function bloom_room(s)
  local gen = s.gens[1]
  local m = meta(s, gen)
  if m.f > 0 and m.n < bloom_params(s, m.f - 1) then return end
  m.f = m.f + 1
  m.n = 0
  m.dirty = true
  local _, _, _, segments = bloom_params(s, m.f - 1)
  for seg = 0, segments - 1 do
    local key = gen .. ':' .. (m.f - 1) .. ':' .. seg
    redis.call('SETBIT', key, SEGMENT_BITS - 1, 0)  -- one exact allocation
    if s.expire_at then redis.call('EXPIREAT', key, s.expire_at) end
  end
end

-- sets fp's bits in the newest filter (after bloom_room); 1 if one was clear
local function bloom_set(s, h1, h2)
  local gen = s.gens[1]
  local m = meta(s, gen)
  local i = m.f - 1
  local _, bits, k = bloom_params(s, i)
  local new = 0
  for j = 0, k - 1 do
    local pos = (h1 + j * h2) % bits
    local seg = math.floor(pos / SEGMENT_BITS)
    if redis.call('SETBIT', gen .. ':' .. i .. ':' .. seg, pos % SEGMENT_BITS, 1) == 0 then new = 1 end
  end
  if new == 1 then
    m.n = m.n + 1
    m.t = m.t + 1
    m.dirty = true
  end
  return new
end

local function bloom_seen(s, fp, h1, h2, skip_newest)
  for gi, gen in ipairs(s.gens) do
    local m = meta(s, gen)
    local last = m.f - 1
    if gi == 1 and skip_newest then last = last - 1 end
    for i = last, 0, -1 do
      if bloom_test(s, gen, i, h1, h2) then return true end
    end
  end
  return false
end

local function was_forgotten(s, fp)
  if s.has_forgotten == nil then s.has_forgotten = redis.call('EXISTS', s.forgotten) == 1 end
  return s.has_forgotten and redis.call('SREM', s.forgotten, fp) == 1
end

local function seen_add(s, fp)
  if s.bloom then
    local h1, h2 = hashes(fp)
    bloom_room(s)
    if was_forgotten(s, fp) then
      bloom_set(s, h1, h2)
      return 1
    end
    if bloom_seen(s, fp, h1, h2, true) then return 0 end
    return bloom_set(s, h1, h2)
  end
  for i = 2, #s.gens do
    if redis.call('SISMEMBER', s.gens[i], fp) == 1 then return 0 end
  end
  local added = redis.call('SADD', s.gens[1], fp)
  if added == 1 and s.expire_at then redis.call('EXPIREAT', s.gens[1], s.expire_at) end
  return added
end

local function seen_mark(s, fp)
  if s.bloom then
    local h1, h2 = hashes(fp)
    bloom_room(s)
    was_forgotten(s, fp)
    bloom_set(s, h1, h2)
  elseif redis.call('SADD', s.gens[1], fp) == 1 and s.expire_at then
    redis.call('EXPIREAT', s.gens[1], s.expire_at)
  end
end

local function seen_check(s, fp)
  if s.bloom then
    if redis.call('SISMEMBER', s.forgotten, fp) == 1 then return 0 end
    local h1, h2 = hashes(fp)
    return bloom_seen(s, fp, h1, h2, false) and 1 or 0
  end
  for _, gen in ipairs(s.gens) do
    if redis.call('SISMEMBER', gen, fp) == 1 then return 1 end
  end
  return 0
end

local function seen_forget(s, fp)
  if s.bloom then
    redis.call('SADD', s.forgotten, fp)
    s.has_forgotten = true
    return
  end
  for _, gen in ipairs(s.gens) do redis.call('SREM', gen, fp) end
end

local function seen_count(s)
  local total = 0
  for _, gen in ipairs(s.gens) do
    if s.bloom then total = total + meta(s, gen).t else total = total + redis.call('SCARD', gen) end
  end
  return total
end

local function seen_close(s)
  for gen, m in pairs(s.metas) do
    if m.dirty then
      redis.call('HSET', gen .. ':meta', 'f', m.f, 'n', m.n, 't', m.t)
      if s.expire_at then redis.call('EXPIREAT', gen .. ':meta', s.expire_at) end
    end
  end
end
