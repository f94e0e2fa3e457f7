-- Shared by the fair lock's scripts (prepended to each). The lock's keys:
-- KEYS[1]  lock: the string '<owner>:<first token of the tenure>' ('<owner>:' when taken by
--          the client's MULTI fast path, which learns its token from the same transaction)
-- KEYS[2]  fencing counter (never deleted)
-- KEYS[3]  waiter queue (list of entries, arrival order)
-- KEYS[4]  waiter deadlines (sorted set: entry -> deadline in ms of Redis time)
-- KEYS[5]  grant channel (a grant publishes '<owner>:<token>')
-- An entry is '<lease ms>:<token step>:<owner>': what a grant needs to know about the waiter.

local function now_ms()
  local t = redis.call('time')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Make the waiter of `entry` the owner: a fresh block of `step` tokens, its lease.
local function take(entry)
  local lease, step, owner = string.match(entry, '^(%d+):(%d+):(.+)$')
  local last = redis.call('incrby', KEYS[2], step)
  local token = last - tonumber(step) + 1
  redis.call('set', KEYS[1], owner .. ':' .. token, 'PX', lease)
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
  local dead = redis.call('zrangebyscore', KEYS[4], '-inf', '(' .. now)
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
        redis.call('publish', KEYS[5], owner .. ':' .. token)
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
