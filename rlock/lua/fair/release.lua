-- Fair lock: end the owner's tenure and hand the lock to the first live waiter.
-- ARGV[1]  owner (client id)
-- ARGV[2]  first token of the tenure being ended (for the reader; the owner check suffices,
--          since a client ends one tenure before it can get the next)
-- ARGV[3]  the owner's entry to queue again at the back (it has more local waiters), or ''
-- ARGV[4]  waiter timeout in ms
-- Returns {-1} when the owner did not hold that tenure (nothing changes),
--         {0} when released (and handed on, if anyone waits),
--         {1, token} when the owner was queued again and is the next owner at once.
if not held_by(ARGV[1]) then
  return {-1}
end
redis.call('del', KEYS[1])
if redis.call('exists', KEYS[3]) == 0 then
  if ARGV[3] == '' then
    return {0}
  end
  local _, token = take(ARGV[3])
  return {1, token}
end
local now = now_ms()
if ARGV[3] ~= '' then
  enqueue(ARGV[3], now, tonumber(ARGV[4]))
end
local head, token = grant_next(now, ARGV[3])
if head ~= nil and head == ARGV[3] then
  return {1, token}
end
return {0}
