-- Fair lock: take the lock if it is free and nobody queues, else queue (or refresh the place).
-- ARGV[1]  owner (client id)
-- ARGV[2]  this waiter's entry ('<lease ms>:<step>:<owner>')
-- ARGV[3]  waiter timeout in ms (a queued waiter not refreshed within it is dropped)
-- ARGV[4]  '1' to queue when not taken, '0' to only try
-- Returns {1, token} when the owner holds the lock (taken now, or granted while it waited),
--         {0, pttl} when it does not (queued when ARGV[4] is '1'),
--         {2, 0} when it holds a tenure of its own fast path (whose token only it knows).
if redis.call('exists', KEYS[1]) == 0 and redis.call('exists', KEYS[3]) == 0 then
  local _, token = take(ARGV[2])
  return {1, token}
end
local mine = held_by(ARGV[1])
if mine then
  redis.call('lrem', KEYS[3], 0, ARGV[2])
  redis.call('zrem', KEYS[4], ARGV[2])
  -- A grant names its token; a fast-path tenure the client already knows (2: not here).
  local token = tonumber(string.sub(mine, #ARGV[1] + 2))
  if token then
    return {1, token}
  end
  return {2, 0}
end
local now = now_ms()
purge(now)
if redis.call('exists', KEYS[1]) == 0 then
  -- Free with waiters: its holder's lease ran out (no release ran to hand it on). The first
  -- live waiter gets it, which may be this one.
  local head, token = grant_next(now, ARGV[2])
  if head == ARGV[2] then
    return {1, token}
  end
  if not head then
    local _, own = take(ARGV[2])
    return {1, own}
  end
end
if ARGV[4] == '1' then
  enqueue(ARGV[2], now, tonumber(ARGV[3]))
end
return {0, redis.call('pttl', KEYS[1])}
