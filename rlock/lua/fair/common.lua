-- Shared by the fair lock's scripts (prepended to each). The lock's keys:
-- KEYS[1]  lock: the string '<owner>:<first token of the tenure>' ('<owner>:' when taken by
--          the client's MULTI fast path, which learns its token from the same transaction)
-- KEYS[2]  fencing counter; seeded from Redis TIME (µs) when absent, kept a week after its
--          last use (see ../acquire.lua)
-- KEYS[3]  waiter queue (list of entries, arrival order)
-- KEYS[4]  waiter deadlines (sorted set: entry -> deadline in ms of Redis time)
-- KEYS[5]  grant channel (a grant publishes '<owner>:<token>')
-- An entry is '<lease ms>:<token step>:<owner>': what a grant needs to know about the waiter.

-- Numbers as decimal integers: Lua's own number-to-string (as in `..`) keeps 14 significant
-- digits, and tokens seeded from TIME have 16.
local function int(n)
  return string.format('%.0f', n)
end

local function now_ms()
  local t = redis.call('time')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A fencing counter that was absent (INCRBY started it from zero) restarts from Redis TIME
-- in microseconds: above every token issued before, since counters rise far slower than the
-- clock. Returns the new counter value (the last token of a block of `step`).
local function seed(step)
  local t = redis.call('time')
  local last = tonumber(t[1]) * 1000000 + tonumber(t[2]) + step - 1
  redis.call('set', KEYS[2], int(last), 'PX', 604800000)
  return last
end

-- Make the waiter of `entry` the owner: a fresh block of `step` tokens, its lease.
local function take(entry)
  local lease, step, owner = string.match(entry, '^(%d+):(%d+):(.+)$')
  local last = redis.call('incrby', KEYS[2], step)
  if last == tonumber(step) then
    last = seed(tonumber(step))
  end
  redis.call('pexpire', KEYS[2], 604800000)
  local token = last - tonumber(step) + 1
  redis.call('set', KEYS[1], owner .. ':' .. int(token), 'PX', lease)
  return owner, token
end

-- The lock's value if `owner` holds it, else nil.
local function held_by(owner)
  local v = redis.call('get', KEYS[1])
  if v and string.sub(v, 1, #owner + 1) == owner .. ':' then
    return v
  end
  return nil
end

-- Drop waiters whose deadline passed (they stopped refreshing: dead, paused or gone).
local function purge(now)
  local dead = redis.call('zrangebyscore', KEYS[4], '-inf', '(' .. int(now))
  for _, entry in ipairs(dead) do
    redis.call('lrem', KEYS[3], 0, entry)
    redis.call('zrem', KEYS[4], entry)
  end
end

-- Hand the free lock to the first live waiter and tell it (unless it is `quiet`, the caller
-- that learns from the reply). Returns its entry and token, or nil when nobody waits.
local function grant_next(now, quiet)
  while true do
    local head = redis.call('lpop', KEYS[3])
    if not head then
      return nil
    end
    local deadline = redis.call('zscore', KEYS[4], head)
    redis.call('zrem', KEYS[4], head)
    if deadline and tonumber(deadline) >= now then
      local owner, token = take(head)
      if head ~= quiet then
        redis.call('publish', KEYS[5], owner .. ':' .. int(token))
      end
      return head, token
    end
  end
end

-- Join the queue (at the back, once) or refresh the deadline of a queued waiter.
local function enqueue(entry, now, timeout)
  if not redis.call('zscore', KEYS[4], entry) then
    redis.call('rpush', KEYS[3], entry)
  end
  redis.call('zadd', KEYS[4], now + timeout, entry)
end
