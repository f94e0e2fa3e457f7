-- Batched watchdog renewal. Renews only the exact acquisition (owner AND token), so a
-- renewal still in flight when its lock is released can never extend a later acquisition.
-- A fair lock (a string '<client id>:<token>') is renewed when the client holds it: a client
-- ends one tenure before it gets the next, and it renews the one it holds either way.
-- KEYS[i]      lock hash of the i-th lock
-- ARGV[1]      lease in milliseconds
-- ARGV[2i]     owner id of the i-th lock
-- ARGV[2i+1]   token of the i-th lock
-- Returns a list with 1 (renewed) or 0 (gone: expired, deleted, or taken by someone else).
local result = {}
for i = 1, #KEYS do
  local owner = ARGV[2 * i]
  local fair = redis.call('type', KEYS[i])['ok'] == 'string'
  local v = fair and redis.call('get', KEYS[i])
  if (fair and string.sub(v, 1, #owner + 1) == owner .. ':')
     or (not fair and redis.call('hexists', KEYS[i], owner) == 1
         and redis.call('hget', KEYS[i], ':fence') == ARGV[2 * i + 1]) then
    redis.call('pexpire', KEYS[i], ARGV[1])
    result[i] = 1
  else
    result[i] = 0
  end
end
return result
