-- Push a batch of requests into the frontier, deduplicating atomically:
-- a fingerprint is added to the seen set only together with its request.
--
-- KEYS[1]  seen key (the exact set, or the base of the Bloom filter's keys)
-- KEYS[2]  sites zset: website -> time (Redis TIME, s) it may next be served;
--          holds exactly the websites whose queue is not empty
-- KEYS[3]  not-before zset: website -> time before which it must not be served
-- KEYS[4]  sequence counter (FIFO order within a priority)
-- KEYS[5]  workers zset: worker id -> last time it was busy
-- KEYS[6]  depths zset: website -> queued requests (depth.lua)
-- KEYS[7]  queued counter: total queued requests (depth.lua)
-- KEYS[8..] one queue zset per run of requests of one website below, in
--          order (the caller groups the requests by website: one run each)
-- ARGV[1]  worker id
-- ARGV[2]  number of requests N, then N groups of 6 values:
--          website, fingerprint (20 raw bytes; any other length: as the
--          caller gives it, hex),
--          mode (0 = dedupe, 1 = dont_filter: store and mark seen,
--                2 = requeue: store, leave the seen set alone),
--          queue score (-priority), not-before time ('0' = none),
--          and the encoded request
-- ARGV[3 + 6N]  the seen spec (seen_lib.lua; "" = exact set)
-- ARGV[4 + 6N]  P, then P pairs (website, k): k requests the worker popped
--          since it last sent them, for the depth index (depth.lua)
-- return   {stored flags (1 stored, 0 duplicate) ..., sites with work}
--
-- A queue member is '<seq:016x>#' .. fingerprint .. request for a 20-byte
-- fingerprint, '<seq:016x>:<fingerprint>:' .. request for any other (and for
-- every member written before raw fingerprints): the 16 hex digits of seq come
-- first either way, so old and new members keep their FIFO order.

-- @include seen_lib.lua
-- @include depth.lua

-- One redis.call per key, not per request: the seen set is read in one call
-- and written in one (seen_prefetch, seen_close), each queue gets its new
-- members in one ZADD, and the sites and not-before zsets are read for the
-- websites touched (ZMSCORE), updated here as the per-request ZADD GT / NX
-- would have done in order, and written in one ZADD each.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[2])
local seen = seen_open(KEYS[1], ARGV[3 + n * 6], now)
local seq = redis.call('INCRBY', KEYS[4], n) - n
local fps, nfps = {}, 0
for i = 0, n - 1 do
  if ARGV[5 + i * 6] ~= '2' then
    nfps = nfps + 1
    fps[nfps] = ARGV[4 + i * 6]
  end
end
seen_prefetch(seen, fps)
local out = {}
-- The requests come in runs of one website (the caller groups them): each
-- run's stored requests go to its queue in one ZADD, from one table reused
-- by every run.
local run, nrun, key, run_site = {}, 0, 7, nil
local delta, names, nnames = {}, {}, 0  -- website -> requests added; the websites with a request stored, by run
local events, ne = {}, 0  -- per request stored: website, not-before time
local function flush_run()
  if nrun == 0 then return end
  local added = 0
  for j = 1, nrun, 4000 do
    added = added + redis.call('ZADD', KEYS[key], unpack(run, j, math.min(j + 3999, nrun)))
  end
  delta[run_site] = (delta[run_site] or 0) + added
  nnames = nnames + 1
  names[nnames] = run_site
  nrun = 0
end
-- '<seq:016x>' without string.format (a sprintf per request): the first 12
-- digits change once in 65,536 requests, the last 4 come from this table
local HEX = {[0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'}
local high, high_hex = -1, ''
local timed = false  -- a request with a not-before time
for i = 0, n - 1 do
  local base = 3 + i * 6
  local site = ARGV[base]
  if site ~= run_site then
    flush_run()
    key = key + 1
    run_site = site
  end
  local fp = ARGV[base + 1]
  local mode = ARGV[base + 2]
  local stored = 1
  if mode == '0' then
    stored = seen_add(seen, fp)
  elseif mode == '1' then
    seen_mark(seen, fp)
  end
  if stored == 1 then
    local v = seq + i
    local top = v - v % 65536
    if top ~= high then
      high = top
      high_hex = string.format('%012x', top / 65536)
    end
    local d4 = v % 16
    v = (v - d4) / 16
    local d3 = v % 16
    v = (v - d3) / 16
    local d2 = v % 16
    local d1 = ((v - d2) / 16) % 16
    -- 20 raw bytes: '<seq>#<fp>' .. payload; any other fingerprint: '<seq>:<fp>:' .. payload
    local member
    if is_raw(fp) then
      member = high_hex .. HEX[d1] .. HEX[d2] .. HEX[d3] .. HEX[d4] .. '#' .. fp .. ARGV[base + 5]
    else
      member = high_hex .. HEX[d1] .. HEX[d2] .. HEX[d3] .. HEX[d4] .. ':' .. fp .. ':' .. ARGV[base + 5]
    end
    run[nrun + 1], run[nrun + 2] = ARGV[base + 3], member
    nrun = nrun + 2
    local nb = ARGV[base + 4]
    nb = nb == '0' and 0 or tonumber(nb)  -- tonumber costs a strtod
    if nb > 0 then timed = true end
    events[ne + 1], events[ne + 2] = site, nb
    ne = ne + 2
  end
  out[i + 1] = stored
end
flush_run()
seen_close(seen)
local now_s = string.format('%.17g', now)  -- formatted once (Redis formats a Lua number per use)
if ne > 0 and not timed then
  -- each website into the sites zset (NX) at max(now, its not-before): no
  -- not-before changes here, so one ZADD NX does what one per request did
  -- (a website in two runs is named twice: NX keeps the first)
  for j = 1, nnames, 2000 do
    local hi = math.min(j + 1999, nnames)
    local nb = redis.call('ZMSCORE', KEYS[3], unpack(names, j, hi))
    local args = {}
    for k = j, hi do
      local v = nb[k - j + 1]
      args[2 * (k - j) + 1], args[2 * (k - j) + 2] = (v and tonumber(v) > now) and v or now_s, names[k]
    end
    redis.call('ZADD', KEYS[2], 'NX', unpack(args))
  end
elseif ne > 0 then
  -- the sites and not-before scores of the websites touched, then each request's
  -- ZADD not_before GT / sites GT (with a not-before) or sites NX at max(now,
  -- not-before) (without), in order, as the loop above would have made them
  local names, idx = {}, {}
  for j = 1, ne, 2 do
    local site = events[j]
    if idx[site] == nil then
      names[#names + 1] = site
      idx[site] = #names
    end
  end
  local sv, nv = {}, {}
  for j = 1, #names, 4000 do
    local hi = math.min(j + 3999, #names)
    local ss = redis.call('ZMSCORE', KEYS[2], unpack(names, j, hi))
    local ns = redis.call('ZMSCORE', KEYS[3], unpack(names, j, hi))
    for k = j, hi do
      sv[k] = ss[k - j + 1] and tonumber(ss[k - j + 1]) or false
      nv[k] = ns[k - j + 1] and tonumber(ns[k - j + 1]) or false
    end
  end
  local s_dirty, n_dirty = {}, {}
  for j = 1, #events, 2 do
    local k, until_t = idx[events[j]], events[j + 1]
    if until_t > 0 then
      if not nv[k] or until_t > nv[k] then
        nv[k] = until_t
        n_dirty[k] = true
      end
      if not sv[k] or until_t > sv[k] then
        sv[k] = until_t
        s_dirty[k] = true
      end
    elseif not sv[k] then
      sv[k] = (nv[k] and nv[k] > now) and nv[k] or now
      s_dirty[k] = true
    end
  end
  local sargs, nargs = {}, {}
  for k, site in ipairs(names) do
    if s_dirty[k] then
      sargs[#sargs + 1] = sv[k]
      sargs[#sargs + 1] = site
    end
    if n_dirty[k] then
      nargs[#nargs + 1] = nv[k]
      nargs[#nargs + 1] = site
    end
  end
  for j = 1, #sargs, 4000 do redis.call('ZADD', KEYS[2], unpack(sargs, j, math.min(j + 3999, #sargs))) end
  for j = 1, #nargs, 4000 do redis.call('ZADD', KEYS[3], unpack(nargs, j, math.min(j + 3999, #nargs))) end
end
add_depths(KEYS[6], KEYS[7], delta, 0, (read_pending(4 + n * 6)))
redis.call('ZADD', KEYS[5], now_s, ARGV[1])
out[#out + 1] = redis.call('ZCARD', KEYS[2])
return out
