-- Compensation for an acquire whose outcome is unknown (response timeout, dropped
-- connection). Runs on the same connection after the lost attempt, so it executes after
-- it if the attempt reached Redis at all. Takes back exactly the hold the attempt added.
-- KEYS[1]  lock hash
-- KEYS[2]  pub/sub channel of the lock
-- ARGV[1]  owner id
-- ARGV[2]  hold count the owner had before the attempt (0 for a new acquisition)
-- ARGV[3]  token of the owner's current acquisition ('' when prior count is 0)
-- ARGV[4]  message published to waiters when the lock becomes free
-- Returns 1 when a hold was taken back, 0 when the attempt had not applied.
local count = redis.call('hget', KEYS[1], ARGV[1])
if not count then
  return 0
end
count = tonumber(count)
local prior = tonumber(ARGV[2])
if redis.call('hget', KEYS[1], ':fence') ~= ARGV[3] then
  prior = 0
end
if count <= prior then
  return 0
end
if count == 1 then
  redis.call('del', KEYS[1])
  redis.call('publish', KEYS[2], ARGV[4])
else
  redis.call('hincrby', KEYS[1], ARGV[1], -1)
end
return 1
