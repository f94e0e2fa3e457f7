-- Release one hold of a lock, checking owner and acquisition token.
-- KEYS[1]  lock hash
-- KEYS[2]  pub/sub channel of the lock
-- ARGV[1]  owner id
-- ARGV[2]  token of the acquisition being released
-- ARGV[3]  message published to waiters when the lock becomes free
-- Returns -1 when the caller does not hold this acquisition (nothing changes),
--         the remaining hold count (> 0) after a reentrant release,
--         0 when the lock was deleted and waiters were woken.
if redis.call('hexists', KEYS[1], ARGV[1]) == 0
   or redis.call('hget', KEYS[1], ':fence') ~= ARGV[2] then
  return -1
end
local count = redis.call('hincrby', KEYS[1], ARGV[1], -1)
if count > 0 then
  return count
end
redis.call('del', KEYS[1])
redis.call('publish', KEYS[2], ARGV[3])
return 0
