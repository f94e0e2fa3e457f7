-- Raise a lock's fencing counter to at least ARGV[1] (never lowers it). Used after Redis lost
-- its data, to put the counter back above the largest token the protected resource has seen.
-- KEYS[1]  fencing counter
-- ARGV[1]  minimum value
-- Returns the counter's value afterwards.
local current = tonumber(redis.call('get', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if current < floor then
  redis.call('set', KEYS[1], ARGV[1])
  return floor
end
return current
