"""The Redis rate limiter's rules, as Lua scripts that Redis runs atomically: the memory
backend's rules (`ratelimit/memory.py`), on Redis's clock.

Each scope has an in-flight key and, by its window, exact or per-minute state:

    dg:rl:{scope}:log   exact (windows under an hour): sorted set, admission id -> time (ms)
    dg:rl:{scope}:amt   exact: hash, admission id -> tokens reserved (then used); _total = sum
    dg:rl:{scope}:min   per minute (an hour or more): hash, minute -> "requests tokens", with
                        _r and _t their sums and _first/_last the span of minutes it holds:
                        at most window / 60 + 1 minutes, whatever the traffic
    dg:rl:{scope}:fly   sorted set, admission id -> when its in-flight lease runs out

The exact log holds at most the limit's number of entries; a refusal reads it oldest first
only as far as the tokens it needs. Per-minute state is read a minute at a time: a refusal
never reads one entry per request.
"""

from __future__ import annotations

import hashlib

__all__ = ["ADMIT", "ADMIT_SHA", "RENEW", "SETTLE", "SETTLE_SHA", "SNAPSHOT"]

# The scripts' shared part. A scope's state is exact (mode 'e': an admission log) or per minute
# (mode 'm': buckets); each scope's arguments start with its mode and window (ms), and KEYS
# hold each scope's state keys (two, or one) and then its in-flight key. Times are ms on
# Redis's clock (`TIME`), or on the clock a test passes. Long lists are read in slices:
# unpack() of a long list would overflow Lua's stack.
_LIBRARY = """
local MINUTE = 60000

local function clock(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- make a key live at least `ms` longer (in-flight keys: leases may differ between processes)
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, math.ceil(ms)) end
end

-- exact: log = sorted set, id -> admission time; amt = hash, id -> tokens, _total = their sum
local exact = {}

function exact.evict(keys, now, window)
  local horizon = now - window
  while true do
    local old = redis.call('ZRANGEBYSCORE', keys[1], '-inf', horizon, 'LIMIT', 0, 1000)
    if #old == 0 then break end
    local amounts = redis.call('HMGET', keys[2], unpack(old))
    local freed = 0
    for j = 1, #amounts do freed = freed + (tonumber(amounts[j]) or 0) end
    redis.call('ZREM', keys[1], unpack(old))
    redis.call('HDEL', keys[2], unpack(old))
    redis.call('HINCRBY', keys[2], '_total', 0 - freed)  -- 0 - x: never '-0'
  end
end

function exact.usage(keys)
  return redis.call('ZCARD', keys[1]), tonumber(redis.call('HGET', keys[2], '_total') or '0')
end

-- ms until `needed` requests or tokens have left the window (oldest first, 100 at a time)
function exact.wait(keys, now, window, kind, needed)
  local freed, start = 0, 0
  while true do
    local entries = redis.call('ZRANGE', keys[1], start, start + 99, 'WITHSCORES')
    if #entries == 0 then return window end
    local ids = {}
    for j = 1, #entries, 2 do ids[#ids + 1] = entries[j] end
    local amounts = nil
    if kind == 'tokens' then amounts = redis.call('HMGET', keys[2], unpack(ids)) end
    for j = 1, #ids do
      if amounts then freed = freed + (tonumber(amounts[j]) or 0) else freed = freed + 1 end
      if freed >= needed then return tonumber(entries[2 * j]) + window - now end
    end
    start = start + 100
  end
end

function exact.add(keys, now, id, tokens, window)
  redis.call('ZADD', keys[1], now, id)
  redis.call('HSET', keys[2], id, tokens)
  redis.call('HINCRBY', keys[2], '_total', tokens)
  redis.call('PEXPIRE', keys[1], math.ceil(window) + 1000)
  redis.call('PEXPIRE', keys[2], math.ceil(window) + 1000)
end

function exact.oldest_leaves(keys, now, window)
  local oldest = redis.call('ZRANGE', keys[1], 0, 0, 'WITHSCORES')
  if #oldest == 0 then return 0 end
  return tonumber(oldest[2]) + window - now
end

-- replace the reservation by what was used, less or more (an entry already gone is left alone)
function exact.refund(keys, id, minute, reserved, used)
  local held = tonumber(redis.call('HGET', keys[2], id) or '-1')
  if held >= 0 and held ~= used then
    redis.call('HSET', keys[2], id, used)
    redis.call('HINCRBY', keys[2], '_total', used - held)
  end
end

-- per minute: one hash, field <minute> -> "<requests> <tokens>", and h<hour> -> the same
-- summed over the hour's minutes (a refusal reads the hours, then one hour's minutes);
-- _r, _t = the sums; _first, _last = the oldest minute that may hold a field, the newest that does
local minutes = {}

local function bucket(value)
  if not value then return 0, 0 end
  local requests, tokens = string.match(value, '^(%d+) (%-?%d+)$')
  return tonumber(requests), tonumber(tokens)
end

-- add (requests, tokens) to a bucket field, which is made if missing
local function bump(key, field, requests, tokens)
  local held_requests, held_tokens = bucket(redis.call('HGET', key, field))
  redis.call('HSET', key, field, (held_requests + requests) .. ' ' .. (held_tokens + tokens))
end

local function hour_of(minute)  -- the field of the minute's hour
  return 'h' .. math.floor(minute / 60)
end

local function minute_fields(from, to)
  local fields = {}
  for minute = from, to do fields[#fields + 1] = tostring(minute) end
  return fields
end

-- drop the minutes wholly out of the window: amortized one per minute, at most a window's
function minutes.evict(keys, now, window)
  local edge = redis.call('HMGET', keys[1], '_first', '_last')
  local first, last = tonumber(edge[1]), tonumber(edge[2])
  local counted = math.floor((now - window) / MINUTE)  -- the oldest minute still counted
  if not first or first >= counted then return end
  if last < counted then
    redis.call('DEL', keys[1])
    return
  end
  local fields = minute_fields(first, counted - 1)
  local values = redis.call('HMGET', keys[1], unpack(fields))
  local requests, tokens, by_hour = 0, 0, {}
  for j = 1, #values do
    local r, t = bucket(values[j])
    local hour = math.floor((first + j - 1) / 60)
    local gone = by_hour[hour] or {0, 0}
    by_hour[hour] = {gone[1] + r, gone[2] + t}
    requests, tokens = requests + r, tokens + t
  end
  redis.call('HDEL', keys[1], unpack(fields))
  for hour, gone in pairs(by_hour) do
    if hour < math.floor(counted / 60) then  -- every minute of it is gone
      redis.call('HDEL', keys[1], 'h' .. hour)
    elseif gone[1] > 0 or gone[2] ~= 0 then
      bump(keys[1], 'h' .. hour, 0 - gone[1], 0 - gone[2])
    end
  end
  redis.call('HINCRBY', keys[1], '_r', 0 - requests)
  redis.call('HINCRBY', keys[1], '_t', 0 - tokens)
  redis.call('HSET', keys[1], '_first', counted)
end

function minutes.usage(keys)
  local totals = redis.call('HMGET', keys[1], '_r', '_t')
  return tonumber(totals[1]) or 0, tonumber(totals[2]) or 0
end

-- ms until `needed` requests or tokens have left: a minute leaves whole, once all of it is
-- out of the window. Reads the hours oldest first, then the minutes of the hour that frees
-- enough: at most window / 3600 + 2 and 60 fields.
function minutes.wait(keys, now, window, kind, needed)
  local edge = redis.call('HMGET', keys[1], '_first', '_last')
  local first, last = tonumber(edge[1]), tonumber(edge[2])
  if not first then return window end
  local first_hour, last_hour = math.floor(first / 60), math.floor(last / 60)
  local hour_fields = {}
  for hour = first_hour, last_hour do hour_fields[#hour_fields + 1] = 'h' .. hour end
  local hours = redis.call('HMGET', keys[1], unpack(hour_fields))
  local freed = 0
  for i = 1, #hours do
    local requests, tokens = bucket(hours[i])
    local amount = requests
    if kind == 'tokens' then amount = tokens end
    if freed + amount >= needed then
      local hour = first_hour + i - 1
      local from, to = math.max(first, hour * 60), math.min(last, hour * 60 + 59)
      local values = redis.call('HMGET', keys[1], unpack(minute_fields(from, to)))
      for j = 1, #values do
        local r, t = bucket(values[j])
        if kind == 'tokens' then freed = freed + t else freed = freed + r end
        if freed >= needed then return (from + j) * MINUTE + window - now end
      end
      return (to + 1) * MINUTE + window - now
    end
    freed = freed + amount
  end
  return window
end

function minutes.add(keys, now, id, tokens, window)
  local minute = math.floor(now / MINUTE)
  bump(keys[1], tostring(minute), 1, tokens)
  bump(keys[1], hour_of(minute), 1, tokens)
  redis.call('HSET', keys[1], '_last', minute)
  redis.call('HSETNX', keys[1], '_first', minute)
  redis.call('HINCRBY', keys[1], '_r', 1)
  redis.call('HINCRBY', keys[1], '_t', tokens)
  redis.call('PEXPIRE', keys[1], math.ceil(window) + MINUTE + 1000)
end

-- at the earliest: _first may be older than the oldest minute that still holds traffic
function minutes.oldest_leaves(keys, now, window)
  local first = tonumber(redis.call('HGET', keys[1], '_first') or '')
  if not first then return 0 end
  return (first + 1) * MINUTE + window - now
end

function minutes.refund(keys, id, minute, reserved, used)
  if reserved ~= used and redis.call('HEXISTS', keys[1], minute) == 1 then
    bump(keys[1], minute, 0, used - reserved)
    bump(keys[1], hour_of(tonumber(minute)), 0, used - reserved)
    redis.call('HINCRBY', keys[1], '_t', used - reserved)
  end
end

-- the scopes of a call: their arguments from ARGV[first] on, `width` each
local function scopes_of(first, width)
  local scopes, k = {}, 1
  for a = first, #ARGV, width do
    local scope = {args = a, window = tonumber(ARGV[a + 1])}
    if ARGV[a] == 'm' then
      scope.mode, scope.keys = minutes, {KEYS[k]}
      k = k + 1
    else
      scope.mode, scope.keys = exact, {KEYS[k], KEYS[k + 1]}
      k = k + 2
    end
    scope.fly = KEYS[k]  -- sorted set, admission id -> when its in-flight lease runs out
    k = k + 1
    scopes[#scopes + 1] = scope
  end
  return scopes
end

-- {requests in window, tokens in window, ms until the oldest leaves}
local function snapshot(scope, now)
  local count, total = scope.mode.usage(scope.keys)
  local reset = 0
  if count > 0 then reset = scope.mode.oldest_leaves(scope.keys, now, scope.window) end
  return {count, total, tostring(reset)}
end
"""

# ARGV: id, tokens, lease (ms), clock ('' = Redis's), then per scope: mode, window (ms),
# requests limit, tokens limit, concurrency (-1: none). Returns {1, snapshot, minute} or
# {0, reason, scope index, retry (ms), snapshot}, the snapshot of the first scope.
ADMIT = (
    _LIBRARY
    + """
local id, tokens, lease, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), clock(ARGV[4])
local scopes = scopes_of(5, 5)
for i, scope in ipairs(scopes) do
  local rpm, tpm = tonumber(ARGV[scope.args + 2]), tonumber(ARGV[scope.args + 3])
  local concurrency = tonumber(ARGV[scope.args + 4])
  local mode, keys, window = scope.mode, scope.keys, scope.window
  mode.evict(keys, now, window)
  redis.call('ZREMRANGEBYSCORE', scope.fly, '-inf', now)  -- leases that ran out
  local count, total = mode.usage(keys)
  local refusal, retry = nil, 0
  if concurrency >= 0 and redis.call('ZCARD', scope.fly) >= concurrency then
    refusal, retry = 'concurrency', 1000
  elseif count + 1 > rpm then
    refusal, retry = 'requests', mode.wait(keys, now, window, 'requests', count + 1 - rpm)
  elseif tokens > tpm then
    refusal, retry = 'tokens', window
  elseif total + tokens > tpm then
    refusal, retry = 'tokens', mode.wait(keys, now, window, 'tokens', total + tokens - tpm)
  end
  if refusal then
    return {0, refusal, i - 1, tostring(retry), snapshot(scopes[1], now)}
  end
end
for _, scope in ipairs(scopes) do
  scope.mode.add(scope.keys, now, id, tokens, scope.window)
  redis.call('ZADD', scope.fly, now + lease, id)
  keep(scope.fly, lease + 1000)
end
return {1, snapshot(scopes[1], now), math.floor(now / MINUTE)}
"""
)

# ARGV: id, used tokens, reserved tokens, minute of admission, then per scope: mode, window.
# Replace the reservation by what was used and end the in-flight lease.
SETTLE = (
    _LIBRARY
    + """
local id, used, reserved, minute = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
for _, scope in ipairs(scopes_of(5, 2)) do
  scope.mode.refund(scope.keys, id, minute, reserved, used)
  redis.call('ZREM', scope.fly, id)
end
return 1
"""
)

# KEYS: the in-flight keys of one admission's scopes. ARGV: id, lease (ms), clock. Extends a
# lease that has not run out (XX: a settled or expired admission is not brought back).
RENEW = (
    _LIBRARY
    + """
local id, lease, now = ARGV[1], tonumber(ARGV[2]), clock(ARGV[3])
for _, fly in ipairs(KEYS) do
  redis.call('ZADD', fly, 'XX', now + lease, id)
  keep(fly, lease + 1000)
end
return 1
"""
)

# KEYS: one scope's keys. ARGV: clock, mode, window.
SNAPSHOT = (
    _LIBRARY
    + """
local now = clock(ARGV[1])
local scope = scopes_of(2, 2)[1]
scope.mode.evict(scope.keys, now, scope.window)
return snapshot(scope, now)
"""
)


ADMIT_SHA = hashlib.sha1(ADMIT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
SETTLE_SHA = hashlib.sha1(SETTLE.encode()).hexdigest()  # noqa: S324
