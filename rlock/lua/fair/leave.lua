-- Fair lock: the owner wants nothing more of the lock (every local waiter gave up, or an
-- operation's outcome is unknown): leave the queue and, if it holds the lock, hand it on.
-- Idempotent, so it may be retried and may follow a lost command.
-- ARGV[1]  owner (client id)
-- ARGV[2]  the owner's entry
-- Returns 1 when the owner held the lock (now released), 0 otherwise.
redis.call('lrem', KEYS[3], 0, ARGV[2])
redis.call('zrem', KEYS[4], ARGV[2])
if not held_by(ARGV[1]) then
  return 0
end
redis.call('del', KEYS[1])
grant_next(now_ms(), '')
return 1
