-- Delete a lock whoever holds it (admin use, and RedLock's all-master cleanup when
-- ARGV[1] names an owner). Wakes waiters.
-- KEYS[1]  lock hash
-- KEYS[2]  pub/sub channel of the lock
-- ARGV[1]  owner id that must hold the lock, or '' for any owner
-- ARGV[2]  message published to waiters
-- Returns 1 when a lock was deleted, 0 otherwise.
if redis.call('exists', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] ~= '' and redis.call('hexists', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('del', KEYS[1])
redis.call('publish', KEYS[2], ARGV[2])
return 1
