-- tollgate: one call on the buckets of one key, atomically (contract §2 and §4): refill, then
-- acquire, peek, refund, undo, charge or lease, on one or several limits all-or-nothing.
-- It follows the pure step function (`state.rs`): the same refill, the same undo formula.
--
-- KEYS[1]  the key's hash (the script touches no other key: it runs on Redis Cluster)
-- ARGV[1]  op: 'a' acquire n (n = 0: a snapshot), 'r' refund n (add, capped), 'c' charge n
--          (take what is there, up to n, refuse nothing), 'l' lease (take max(n, L) or what is
--          there, at least n), 'u' only the undo below
-- ARGV[2]  now in microseconds since the Unix epoch, or "" for the server's TIME
-- ARGV[3]  n   tokens
-- ARGV[4]  L   lease size (op 'l'), else 0
-- ARGV[5]  u   tokens to undo first (0: none), taken at the marks given per limit
-- ARGV[6]  count of limits; then 7 values per limit:
--          C (<= 2^32), q (<= C), a, b (a / b steps per microsecond, a <= b, a * b < 2^52),
--          since: when this limit replaced an earlier one (microseconds; "" unknown: now),
--          inherit: 'k' keep tokens (capped) or 'r' reset to full, at that change,
--          taken: the mark the undone take left (op undo), else ""
--
-- With an explicit time (deterministic tests) no expiry is set: expiries run on the server's
-- clock, which an explicit time does not follow.
--
-- The state is a hash: per limit i, tokens, refill mark (a step index) and the limit it was
-- written under ('t', 'm', 's' for the first; 't2', 'm2', 's2', ... for the others). Steps count
-- from the Unix epoch, so every process shares one epoch. Every number stays below 2^53 (Lua
-- numbers are doubles): now < 2^52 microseconds (until year 2112), k <= now, tokens <= C + C +
-- q, and an expiry is computed exactly only when it is under 2^50 microseconds (35 years) away.
--
-- Every command that can fail runs before the first write: a script error never leaves tokens
-- spent.
--
-- Returns {allowed (0/1), now, taken (op 'l': tokens leased; else 0), given (tokens the undo
-- gave back), then tokens and mark after the call for each limit}.

-- TIME followed by a write needs effects replication before Redis 5 (since 5 it is the only
-- mode, and from 7 this call is a no-op).
if redis.replicate_commands then
  redis.replicate_commands()
end

local op = ARGV[1]
local explicit = ARGV[2] ~= ''
local now
if explicit then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local n = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local undo = tonumber(ARGV[5])
local count = tonumber(ARGV[6])

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

-- k(t) = floor(t * a / b) = floor(t / b) * a + floor((t mod b) * a / b)
local function step_of(t, a, b)
  local whole = idiv(t, b)
  return whole * a + idiv((t - whole * b) * a, b)
end

-- T(j) = ceil(j * b / a) = floor(j / a) * b + ceil((j mod a) * b / a), the start of step j
local function start_of(j, a, b)
  local x = idiv(j, a)
  return x * b + idiv((j - x * a) * b + a - 1, a)
end

-- Refill to step k (contract §2): nothing when k <= mark (a clock that went back).
local function refill(tokens, mark, k, C, q)
  if k > mark then
    -- Steps beyond ceil(C / q) add nothing: clamp first, so nothing grows past 2^53.
    local steps = math.min(k - mark, idiv(C + q - 1, q))
    return math.min(C, tokens + steps * q), k
  end
  return tokens, mark
end

local stored
if count == 1 then
  stored = redis.call('HMGET', KEYS[1], 't', 'm', 's', 'w')
else
  local fields = {'t', 'm', 's'}
  for i = 2, count do
    fields[#fields + 1] = 't' .. i
    fields[#fields + 1] = 'm' .. i
    fields[#fields + 1] = 's' .. i
  end
  fields[#fields + 1] = 'w'
  stored = redis.call('HMGET', KEYS[1], unpack(fields))
end
-- When the key was last written (microseconds): a reset applies only to a bucket written
-- before its change.
local written = tonumber(stored[3 * count + 1])

local L = {}
local present = false
for i = 1, count do
  local base = 6 + (i - 1) * 7
  local b = {
    C = tonumber(ARGV[base + 1]),
    q = tonumber(ARGV[base + 2]),
    a = tonumber(ARGV[base + 3]),
    b = tonumber(ARGV[base + 4]),
    since = tonumber(ARGV[base + 5]),
    inherit = ARGV[base + 6],
    taken = tonumber(ARGV[base + 7]),
  }
  -- The limit and the change that made it: the same limit set again (a reset) is a change.
  b.sig = ARGV[base + 1] .. ':' .. ARGV[base + 2] .. ':' .. ARGV[base + 3] .. ':' .. ARGV[base + 4]
    .. ':' .. ARGV[base + 5]
  b.k = step_of(now, b.a, b.b)
  local t, m, s = stored[3 * i - 2], stored[3 * i - 1], stored[3 * i]
  b.new_sig = not s or s ~= b.sig
  if t then
    present = true
    b.tokens, b.mark = tonumber(t), tonumber(m)
    if s and s ~= b.sig then
      -- Written under another limit: convert as of the change (state::convert). Refill under
      -- the old limit to the change, keep (capped) or reset the tokens, and mark the new
      -- limit's step of the change; a mark ahead of it moves the change there.
      local C0, q0, a0, b0 = string.match(s, '^(%d+):(%d+):(%d+):(%d+)')
      C0, q0, a0, b0 = tonumber(C0), tonumber(q0), tonumber(a0), tonumber(b0)
      local at = now
      if b.since and b.since < now then
        at = b.since
      end
      local k0 = step_of(at, a0, b0)
      b.tokens, b.mark = refill(b.tokens, b.mark, k0, C0, q0)
      if b.mark > k0 then
        at = math.max(at, start_of(b.mark, a0, b0))
      end
      -- A reset applies to a bucket last written before the change; one written since (by a
      -- process still on the earlier limit) keeps its tokens, or every such write would
      -- bring another full bucket. (A key from before `w` was written: by its mark.)
      if b.inherit == 'r' and b.since
          and ((written and written < b.since) or (not written and b.mark <= k0)) then
        b.tokens = b.C
      else
        b.tokens = math.min(b.tokens, b.C)
      end
      b.mark = step_of(at, b.a, b.b)
      b.converted = true
    end
  else
    -- A new (or expired) bucket is full, marked at the step of this call.
    b.tokens, b.mark = b.C, b.k
    b.fresh = true
  end
  b.old_tokens, b.old_mark = b.tokens, b.mark
  L[i] = b
end

-- An undo first (state::undo): steps other calls refilled since the take are charged q each.
local given = 0
if undo > 0 then
  given = undo
  for i = 1, count do
    local b = L[i]
    local others = b.mark - b.taken
    local give = 0
    if others >= 0 then
      give = math.max(0, undo - others * b.q)
    end
    b.tokens, b.mark = refill(b.tokens, b.mark, b.k, b.C, b.q)
    b.tokens = math.min(b.C, b.tokens + give)
    given = math.min(given, give)
  end
end

for i = 1, count do
  local b = L[i]
  b.tokens, b.mark = refill(b.tokens, b.mark, b.k, b.C, b.q)
end

local allowed = 1
local taken = 0
if op == 'a' or op == 'l' then
  local least = L[1].tokens
  for i = 2, count do
    least = math.min(least, L[i].tokens)
  end
  if n > least then
    allowed = 0
  else
    taken = n
    if op == 'l' then
      taken = math.min(math.max(n, lease), least)
    end
    for i = 1, count do
      L[i].tokens = L[i].tokens - taken
    end
  end
  if op == 'a' then
    taken = 0
  end
elseif op == 'r' then
  for i = 1, count do
    L[i].tokens = math.min(L[i].C, L[i].tokens + n)
  end
elseif op == 'c' then
  for i = 1, count do
    L[i].tokens = L[i].tokens - math.min(n, L[i].tokens)
  end
end

-- The key expires when every bucket would be full again: a full bucket and a missing one are
-- the same. Computed before any write. A bucket that takes 35 years or more to fill gets no
-- expiry: the key stays, which costs memory, never an early reset.
local changed = not present
local full = true
local ttl_ms = 0
local forever = false
for i = 1, count do
  local b = L[i]
  if b.tokens ~= b.old_tokens or b.mark ~= b.old_mark or b.converted or b.fresh then
    changed = true
  end
  if b.tokens < b.C then
    full = false
    if not explicit then
      local steps_to_full = idiv(b.C - b.tokens + b.q - 1, b.q)
      if steps_to_full * (b.b / b.a) < 1125899906842624 then -- 2^50 microseconds
        local full_in = math.max(0, start_of(b.mark + steps_to_full, b.a, b.b) - now)
        ttl_ms = math.max(ttl_ms, math.max(1, idiv(full_in + 999, 1000)))
      else
        forever = true
      end
    end
  end
end

-- Write only a change (a denial within a recorded step writes nothing).
if changed then
  if full then
    redis.call('DEL', KEYS[1])
  else
    local values = {}
    for i = 1, count do
      local s = (i == 1) and '' or tostring(i)
      local b = L[i]
      values[#values + 1] = 't' .. s
      values[#values + 1] = b.tokens
      values[#values + 1] = 'm' .. s
      values[#values + 1] = b.mark
      if b.new_sig then
        values[#values + 1] = 's' .. s
        values[#values + 1] = b.sig
      end
    end
    values[#values + 1] = 'w'
    values[#values + 1] = now
    redis.call('HSET', KEYS[1], unpack(values))
    if not explicit then
      if forever then
        -- No expiry, and none left from an earlier, shorter one.
        redis.call('PERSIST', KEYS[1])
      else
        redis.call('PEXPIRE', KEYS[1], ttl_ms)
      end
    end
  end
end

local reply = {allowed, now, taken, given}
for i = 1, count do
  reply[#reply + 1] = L[i].tokens
  reply[#reply + 1] = L[i].mark
end
return reply
