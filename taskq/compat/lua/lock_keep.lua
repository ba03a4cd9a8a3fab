-- lock_keep.lua: renew a shared lock's lease and write cached values back, keeping it.
--
-- KEYS[1] lock (as in lock_acquire.lua), KEYS[2..] values: taskq:{shared}:value:<name>
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3..] the values
--
-- Returns 1, or 0 (and writes nothing) when the lock is no longer ours.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'KEEPTTL') end
return 1
