-- Fair lock: the fast path's transaction started the fencing counter from zero (it was
-- absent: first use, data lost, or expired). Re-seed it from Redis TIME in microseconds while
-- this client holds the lock, and give the client its block from there.
-- ARGV[1]  token step (block size)
-- Returns the first token of the client's new block.
local last = seed(tonumber(ARGV[1]))
return last - tonumber(ARGV[1]) + 1
