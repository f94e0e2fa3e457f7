-- Release one hold of a lock, checking owner and acquisition token.
-- KEYS[1]  lock hash
-- KEYS[2]  pub/sub channel of the lock
-- ARGV[1]  owner id
-- ARGV[2]  token of the acquisition being released
-- ARGV[3]  message published to waiters when the lock becomes free
-- ARGV[4]  '1' when the caller's last hold ends: delete whatever count Redis has (the
--          owner's own count is the authority; a lost reply must not leave a hold behind
--          that nobody will release and the watchdog would renew), '0' to release one hold
-- Returns -1 when the caller does not hold this acquisition (nothing changes),
--         the remaining hold count (> 0) after a reentrant release,
--         0 when the lock was deleted and waiters were woken.
if redis.call('hexists', KEYS[1], ARGV[1]) == 0
   or redis.call('hget', KEYS[1], ':fence') ~= ARGV[2] then
  return -1
end
if ARGV[4] ~= '1' then
  local count = redis.call('hincrby', KEYS[1], ARGV[1], -1)
  if count > 0 then
    return count
  end
end
redis.call('del', KEYS[1])
redis.call('publish', KEYS[2], ARGV[3])
return 0
