-- RedLock second phase: raise this master's fencing counter to the token chosen for the
-- acquisition (the maximum over the quorum) and record it in the lock hash. Applies only
-- while the caller still holds this master's lock with its first-phase token, so it is
-- ordered before any later acquisition on this master.
-- KEYS[1]  lock hash
-- KEYS[2]  fencing counter
-- ARGV[1]  owner id
-- ARGV[2]  token this master issued in the first phase
-- ARGV[3]  token of the acquisition (maximum over the quorum)
-- Returns 1 when applied, 0 when the lock is no longer held with the first-phase token.
if redis.call('hexists', KEYS[1], ARGV[1]) == 0
   or redis.call('hget', KEYS[1], ':fence') ~= ARGV[2] then
  return 0
end
local current = tonumber(redis.call('get', KEYS[2]) or '0')
if current < tonumber(ARGV[3]) then
  redis.call('set', KEYS[2], ARGV[3])
end
redis.call('hset', KEYS[1], ':fence', ARGV[3])
return 1
