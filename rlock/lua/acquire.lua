-- Acquire or re-enter a reentrant, fenced lock (Redisson's RLock + RFencedLock, merged).
-- KEYS[1]  lock hash: owner id -> hold count, plus field ':fence' = token of this acquisition
-- KEYS[2]  fencing counter (same hash slot as KEYS[1]). Absent (first use, data lost, or
--          expired after a week unused), it is seeded from Redis TIME in microseconds, so
--          tokens keep rising across FLUSHALL, an empty restart or a failover without any
--          re-seeding, as long as Redis clocks do not step back (review defects 7 and 11)
-- ARGV[1]  lease in milliseconds
-- ARGV[2]  owner id
-- Returns {1, token, hold_count} when acquired or re-entered,
--         {0, pttl_of_holder, 0} when another owner holds the lock.
if redis.call('exists', KEYS[1]) == 0 then
  local token = redis.call('incr', KEYS[2])
  if token == 1 then
    local t = redis.call('time')
    token = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('set', KEYS[2], token)
  end
  redis.call('pexpire', KEYS[2], 604800000)
  redis.call('hset', KEYS[1], ARGV[2], 1, ':fence', token)
  redis.call('pexpire', KEYS[1], ARGV[1])
  return {1, token, 1}
end
if redis.call('hexists', KEYS[1], ARGV[2]) == 1 then
  local count = redis.call('hincrby', KEYS[1], ARGV[2], 1)
  -- Re-entry may lengthen the lease, never shorten it: the earlier holds were promised theirs
  -- (GT: only when the new expiry is later; Redis 7.0+).
  redis.call('pexpire', KEYS[1], ARGV[1], 'GT')
  return {1, tonumber(redis.call('hget', KEYS[1], ':fence')), count}
end
return {0, redis.call('pttl', KEYS[1]), 0}
