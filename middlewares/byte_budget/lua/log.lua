-- log.lua: the window log and its index by bytes settled, for reserve.lua,
-- draw.lua (through window.lua) and settle.lua. Not a script of its own:
-- store.script_source puts it where a script says "-- @include log.lua".
--
-- Expects  KEYS[1] window log (zset member "<seq>:<bytes>" by time),
--          KEYS[4] the same members by bytes settled: each one's score is the
--          bytes of all entries settled before it and its own (the state
--          hash's `cum` counts them), in the order they were settled.
-- Defines  size_of(member), log_add(entries, cum) -> cum, log_remove(members),
--          written (indexes of the keys a ZADD wrote: their TTL is renewed).
--
-- Why a second sorted set: a denial says when enough settled bytes will have
-- left the window, the time of the first entry at which the bytes settled up
-- to it reach what is needed. Summing sizes along the log costs O(L) (it was
-- a copy of up to 1,000 entries, ~600 us of Redis CPU); with running sums as
-- scores it is one ZRANGEBYSCORE ... LIMIT 0 1, O(log L). Redis keeps no sums
-- over a sorted set's scores, and the log's time order is not the order in
-- which entries arrive (an expired reservation, or the early bytes of a long
-- download, enter with an earlier time), so the running sums follow the
-- order of arrival. Where the two orders agree, which is almost always, the
-- answer is the old one; where they do not it may be earlier (then the retry
-- is denied again, with a new time) or later than the exact one. The
-- accounting (`used`, what leaves the window) reads only KEYS[1] and KEYS[2].

local function size_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local written = {}

-- entries: {{time, member}, ...}; cum: bytes settled so far; returns the new cum.
local function log_add(entries, cum)
  if #entries == 0 then
    return cum
  end
  local by_time, by_bytes = {}, {}
  for _, e in ipairs(entries) do
    cum = cum + size_of(e[2])
    by_time[#by_time + 1] = e[1]
    by_time[#by_time + 1] = e[2]
    by_bytes[#by_bytes + 1] = cum
    by_bytes[#by_bytes + 1] = e[2]
  end
  for i = 1, #by_time, 2000 do
    local j = math.min(i + 1999, #by_time)
    redis.call('ZADD', KEYS[1], unpack(by_time, i, j))
    redis.call('ZADD', KEYS[4], unpack(by_bytes, i, j))
  end
  written[1], written[4] = true, true
  return cum
end

-- Members that left KEYS[1] (already removed from it) leave the index too.
local function log_remove(members)
  for i = 1, #members, 1000 do
    redis.call('ZREM', KEYS[4], unpack(members, i, math.min(i + 999, #members)))
  end
end
