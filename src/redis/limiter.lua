-- tollgate: refill + acquire for one token bucket, atomically (contract §2 and §4).
--
-- KEYS[1]  the bucket's key (the script touches no other key: it runs on Redis Cluster)
-- ARGV[1]  C   capacity                      (<= 2^32)
-- ARGV[2]  q   tokens per step               (<= C)
-- ARGV[3]  a   step rate numerator           (a / b steps per microsecond, a <= b)
-- ARGV[4]  b   step rate denominator, in microseconds (a * b < 2^52)
-- ARGV[5]  n   tokens asked for              (<= C)
-- ARGV[6]  now in microseconds since the Unix epoch, or "" for the server's TIME
--
-- With an explicit time (deterministic tests) no expiry is set: expiries run on the server's
-- clock, which an explicit time does not follow.
--
-- The state is a hash {t = tokens, m = refill mark (a step index)}. Steps count from the Unix
-- epoch, so every process shares one epoch. Every number stays below 2^53 (Lua numbers are
-- doubles): now < 2^52 microseconds (until year 2112), k <= now, tokens <= C + C + q, and an
-- expiry is computed exactly only when it is under 2^50 microseconds (35 years) away, so the
-- start of the step it waits for stays below 2^52 + 2^50.
--
-- Every command that can fail runs before the first write: a script error never leaves tokens
-- spent.
--
-- Returns {allowed (0/1), tokens after, mark after, now}.

-- TIME followed by a write needs effects replication before Redis 5 (since 5 it is the only
-- mode, and from 7 this call is a no-op).
if redis.replicate_commands then
  redis.replicate_commands()
end

local C = tonumber(ARGV[1])
local q = tonumber(ARGV[2])
local a = tonumber(ARGV[3])
local b = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local now
local explicit = ARGV[6] ~= ''
if not explicit then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[6])
end

-- floor(x / y) for 0 <= x, y < 2^52, exact: x / y rounds, so correct by one either way.
local function idiv(x, y)
  local r = math.floor(x / y)
  if r * y > x then
    r = r - 1
  elseif (r + 1) * y <= x then
    r = r + 1
  end
  return r
end

-- k(now) = floor(now * a / b) = floor(now / b) * a + floor((now mod b) * a / b)
local whole = idiv(now, b)
local k = whole * a + idiv((now - whole * b) * a, b)

-- T(j) - now, the wait until step j starts: T(j) = ceil(j * b / a)
--   = floor(j / a) * b + ceil((j mod a) * b / a)
local function wait_until(j)
  local x = idiv(j, a)
  local part = (j - x * a) * b
  local start = x * b + idiv(part + a - 1, a)
  if start > now then
    return start - now
  end
  return 0
end

local state = redis.call('HMGET', KEYS[1], 't', 'm')
local tokens, mark
if state[1] then
  tokens = tonumber(state[1])
  mark = tonumber(state[2])
else
  -- A new (or expired) bucket is full, marked at the step of this call.
  tokens = C
  mark = k
end
local old_tokens, old_mark = tokens, mark

if k > mark then
  -- Steps beyond ceil(C / q) add nothing: clamp first, so nothing grows past 2^53.
  local steps = math.min(k - mark, idiv(C + q - 1, q))
  tokens = math.min(C, tokens + steps * q)
  mark = k
end

local allowed = 0
if n <= tokens then
  tokens = tokens - n
  allowed = 1
end

-- The key expires when the bucket would be full again: a full bucket and a missing one are the
-- same. Computed before any write. A bucket that takes 35 years or more to fill (a huge
-- capacity with a slow refill) gets no expiry: the key stays, which costs memory, never an
-- early reset (an expiry too early would refill the bucket ahead of time).
local ttl_ms = nil
if tokens < C and not explicit then
  local steps_to_full = idiv(C - tokens + q - 1, q)
  -- In doubles, approximately: enough to tell whether the exact value stays small.
  if steps_to_full * (b / a) < 1125899906842624 then -- 2^50 microseconds
    local full_in = wait_until(mark + steps_to_full)
    ttl_ms = math.max(1, idiv(full_in + 999, 1000))
  end
end

-- Write only a change (a denial within a recorded step writes nothing).
if tokens ~= old_tokens or mark ~= old_mark or not state[1] then
  if tokens >= C then
    redis.call('DEL', KEYS[1])
  else
    redis.call('HSET', KEYS[1], 't', tokens, 'm', mark)
    if ttl_ms then
      redis.call('PEXPIRE', KEYS[1], ttl_ms)
    elseif not explicit then
      -- No expiry, and none left from an earlier, shorter one.
      redis.call('PERSIST', KEYS[1])
    end
  end
end

return {allowed, tokens, mark, now}
