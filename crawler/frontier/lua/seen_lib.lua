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
-- seen_prefetch(s, fps)  exact sets: reads whether each of fps is seen in one
--   SMISMEMBER per generation; seen_add and seen_mark then answer from it and
--   write once, in seen_close (a push of N requests: 2 calls, not N)
-- seen_add(s, fp)    -> 1 if fp was not seen (it is now), 0 if it was
-- seen_mark(s, fp)   marks fp seen without testing it (dont_filter requests)
-- seen_check(s, fp)  -> 1 if fp was seen, 0 if not
-- seen_forget(s, fp) un-marks fp: the next push of it is stored again
-- seen_count(s)      -> fingerprints stored (Bloom: counted at insertion)
-- seen_close(s)      writes back what was deferred (Bloom counters, the exact
--                    set's additions); call once at the end
--
-- Fingerprints are 20 raw bytes (a SHA1, as Scrapy's fingerprinter gives them;
-- any other length is kept as the caller sends it, hex: is_raw tells them). An exact set written
-- before raw fingerprints holds 40 hex characters: the string base:fmt says
-- "raw" (every member raw) or "hex:<until>" (old members may be there until
-- that Redis time, 0 = for ever); while "hex", a fingerprint is looked up in
-- both forms and forgotten in both, so a crawl upgraded in place re-crawls
-- nothing. The Bloom filter's bits are the same from either form (the first
-- 18 bytes are the hashes); its forgotten set keeps hex.
--
-- Bloom layout of one generation G: hash G:meta {f = filters, n = items in the
-- newest filter, t = items in all}; filter i is made of segments G:<i>:<j>,
-- each exactly 262,128 bytes (with Redis's 10 bytes of string header, one
-- 256 KiB allocation: memory is the filter's size, allocated when it is made).
-- Filter i holds cap * 2^i fingerprints at error * 2^-i (the chain stays below
-- 2 * error when it grows past cap). The fingerprint (hex, from a
-- cryptographic hash) gives three numbers: h3 picks one segment, in which its
-- k bits are h1 + j * h2 (double hashing); one BITFIELD call tests or sets
-- them. A segment holds ~145,000 fingerprints at 0.1%, so the load of
-- segments varies by well under 1% and costs no measurable error.
-- Forgotten fingerprints of a Bloom filter are kept in the exact set
-- base:forgotten until they are stored again.
local SEGMENT_BITS = 262128 * 8
local LN2 = math.log(2)
local HEX20 = string.rep('%02x', 20)

-- true for a raw 20-byte fingerprint; not for the text of another (the hex
-- of a 10-byte one is 20 characters too, but all hex digits: a raw SHA1 is
-- that with a probability of 16^-20)
local function is_raw(fp)
  return #fp == 20 and string.find(fp, '[^0-9a-f]') ~= nil
end

-- the hex form of a raw 20-byte fingerprint (any other: unchanged)
local function hex_of(fp)
  if not is_raw(fp) then return fp end
  return string.format(HEX20, string.byte(fp, 1, 20))
end

local function bloom_params(s, i)
  local p = s.params[i]
  if p == nil then
    local cap = s.cap * 2 ^ i
    local err = s.err / 2 ^ i
    local segments = math.ceil(cap * -math.log(err) / (LN2 * LN2) / SEGMENT_BITS)
    local k = math.max(1, math.floor(-math.log(err) / LN2 + 0.5))  -- optimal for the unrounded size
    p = {cap, segments * SEGMENT_BITS, k, segments}
    s.params[i] = p
  end
  return p[1], p[2], p[3], p[4]
end

local function seen_open(base, spec, now)
  local s = {base = base, bloom = false, gens = {base}, metas = {}, params = {}, expire_at = nil, now = now,
             known = nil, adds = {}, nadds = 0}
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

local function num48(fp, i)
  local a, b, c, d, e, f = string.byte(fp, i, i + 5)
  return ((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f
end

local function hashes(fp)
  if is_raw(fp) then  -- the same three numbers as its hex form gives
    return {num48(fp, 1), num48(fp, 7) * 2 + 1, num48(fp, 13)}
  end
  local a, b, c = tonumber(string.sub(fp, 1, 12), 16), tonumber(string.sub(fp, 13, 24), 16),
    tonumber(string.sub(fp, 25, 36), 16)
  if not (a and b and c) or #fp < 36 then
    fp = redis.sha1hex(fp)
    a, b, c = tonumber(string.sub(fp, 1, 12), 16), tonumber(string.sub(fp, 13, 24), 16),
      tonumber(string.sub(fp, 25, 36), 16)
  end
  return {a, b * 2 + 1, c}  -- h2 odd: the k offsets differ
end

-- BITFIELD arguments for fp's k bits in filter i: the segment (chosen by h3)
-- and one GET/SET per bit. All k bits in one segment: one call per filter.
local function bits(s, gen, i, h, op)
  local _, _, k, segments = bloom_params(s, i)
  local args = {gen .. ':' .. i .. ':' .. (h[3] % segments)}
  local n, a, b = 1, h[1], h[2]
  for j = 0, k - 1 do
    args[n + 1] = op
    args[n + 2] = 'u1'
    args[n + 3] = (a + j * b) % SEGMENT_BITS
    n = n + 3
    if op == 'SET' then
      n = n + 1
      args[n] = 1
    end
  end
  return args
end

-- true if every bit of fp is set in filter i of generation gen
local function bloom_test(s, gen, i, h)
  for _, bit in ipairs(redis.call('BITFIELD_RO', unpack(bits(s, gen, i, h, 'GET')))) do
    if bit == 0 then return false end
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
local function bloom_set(s, h)
  local gen = s.gens[1]
  local m = meta(s, gen)
  local new = 0
  for _, bit in ipairs(redis.call('BITFIELD', unpack(bits(s, gen, m.f - 1, h, 'SET')))) do
    if bit == 0 then new = 1 end
  end
  if new == 1 then
    m.n = m.n + 1
    m.t = m.t + 1
    m.dirty = true
  end
  return new
end

local function bloom_seen(s, h, skip_newest)
  for gi, gen in ipairs(s.gens) do
    local m = meta(s, gen)
    local last = m.f - 1
    if gi == 1 and skip_newest then last = last - 1 end
    for i = last, 0, -1 do
      if bloom_test(s, gen, i, h) then return true end
    end
  end
  return false
end

local function was_forgotten(s, fp)
  if s.has_forgotten == nil then s.has_forgotten = redis.call('EXISTS', s.forgotten) == 1 end
  return s.has_forgotten and redis.call('SREM', s.forgotten, hex_of(fp)) == 1
end

-- Exact sets: 'raw', or 'hex' while members written before raw fingerprints
-- may be there (see the header); read once per script.
local function exact_format(s)
  if s.fmt == nil then
    s.fmt_key = s.base .. ':fmt'
    local v = redis.call('GET', s.fmt_key)
    if v == 'raw' then
      s.fmt = 'raw'
    elseif v then
      s.fmt_until = tonumber(string.sub(v, 5)) or 0
      s.fmt = (s.fmt_until > 0 and s.now >= s.fmt_until) and 'raw' or 'hex'
      s.fmt_dirty = s.fmt == 'raw'
    else  -- not recorded yet: old members if a set exists already
      s.fmt = 'raw'
      for _, gen in ipairs(s.gens) do
        if redis.call('EXISTS', gen) == 1 then s.fmt = 'hex' end
      end
      s.fmt_until = s.expire_at or 0
      s.fmt_dirty = true
    end
  end
  return s.fmt
end

-- the members that stand for fp in an exact set (its hex form too while 'hex')
local function forms(s, fp)
  if is_raw(fp) and exact_format(s) == 'hex' then return {fp, hex_of(fp)} end
  return {fp}
end

local function any_member(key, members)
  for _, m in ipairs(members) do
    if redis.call('SISMEMBER', key, m) == 1 then return true end
  end
  return false
end

local function seen_prefetch(s, fps)
  if s.bloom then return end
  local known, asked = s.known or {}, s.asked or {}  -- known: fp -> 1: in the newest generation (or added
  s.known, s.asked = known, asked                    -- here), 2: only in an older one
  local hex = exact_format(s) == 'hex'
  local uniq, nu = {}, 0  -- counted here: '#t' is a search each time
  for i = 1, #fps do
    local fp = fps[i]
    if not asked[fp] then
      asked[fp] = true
      nu = nu + 1
      uniq[nu] = fp
    end
  end
  if nu == 0 then return end
  local ask, na = uniq, nu  -- while 'hex', each raw fingerprint is asked in both forms
  if hex then
    ask, na = {}, 0
    for i = 1, nu do
      na = na + 1
      ask[na] = uniq[i]
      if is_raw(uniq[i]) then
        na = na + 1
        ask[na] = hex_of(uniq[i])
      end
    end
  end
  for gi, gen in ipairs(s.gens) do
    local found = nil  -- one SMISMEMBER reply is used as it is; more are joined
    for i = 1, na, 4000 do
      local part = redis.call('SMISMEMBER', gen, unpack(ask, i, math.min(i + 3999, na)))
      if found == nil then
        found = part
      else
        for j = 1, #part do found[i + j - 1] = part[j] end
      end
    end
    local level = gi == 1 and 1 or 2
    local i = 1
    for u = 1, nu do
      local fp = uniq[u]
      local isin = found[i] == 1
      i = i + 1
      if hex and is_raw(fp) then
        isin = isin or found[i] == 1
        i = i + 1
      end
      if isin and known[fp] == nil then known[fp] = level end
    end
  end
end

-- the deferred additions of an exact set, written now
local function flush_adds(s)
  for i = 1, s.nadds, 4000 do
    redis.call('SADD', s.gens[1], unpack(s.adds, i, math.min(i + 3999, s.nadds)))
  end
  if s.nadds > 0 then
    s.wrote = true
    s.adds, s.nadds = {}, 0
  end
end

-- fp into the newest generation of an exact set, at seen_close (known: prefetched)
local function exact_add(s, fp)
  s.known[fp] = 1
  s.nadds = s.nadds + 1
  s.adds[s.nadds] = fp
end

local function seen_add(s, fp)
  if s.bloom then
    local h = hashes(fp)
    bloom_room(s)
    if was_forgotten(s, fp) then
      bloom_set(s, h)
      return 1
    end
    if bloom_seen(s, h, true) then return 0 end
    return bloom_set(s, h)
  end
  if not (s.asked and s.asked[fp]) then seen_prefetch(s, {fp}) end
  if s.known[fp] then return 0 end
  exact_add(s, fp)
  return 1
end

local function seen_mark(s, fp)
  if s.bloom then
    local h = hashes(fp)
    bloom_room(s)
    was_forgotten(s, fp)
    bloom_set(s, h)
    return
  end
  if not (s.asked and s.asked[fp]) then seen_prefetch(s, {fp}) end
  if s.known[fp] ~= 1 then exact_add(s, fp) end
end

local function seen_check(s, fp)
  if s.bloom then
    if redis.call('SISMEMBER', s.forgotten, hex_of(fp)) == 1 then return 0 end
    local h = hashes(fp)
    return bloom_seen(s, h, false) and 1 or 0
  end
  local members = forms(s, fp)
  for _, gen in ipairs(s.gens) do
    if any_member(gen, members) then return 1 end
  end
  return 0
end

local function seen_forget(s, fp)
  if s.bloom then
    redis.call('SADD', s.forgotten, hex_of(fp))
    s.has_forgotten = true
    return
  end
  flush_adds(s)
  local members = forms(s, fp)
  for _, gen in ipairs(s.gens) do redis.call('SREM', gen, unpack(members)) end
  if s.known then s.known[fp] = nil end
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
  flush_adds(s)
  local wrote = s.wrote
  if wrote and s.expire_at then redis.call('EXPIREAT', s.gens[1], s.expire_at) end
  if s.fmt_dirty and (wrote or s.fmt == 'hex') then
    redis.call('SET', s.fmt_key, s.fmt == 'raw' and 'raw' or 'hex:' .. string.format('%d', s.fmt_until))
    s.fmt_dirty = false
    wrote = true
  end
  if s.fmt_key and s.expire_at and wrote then redis.call('EXPIREAT', s.fmt_key, s.expire_at) end
end
