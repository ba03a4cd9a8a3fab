-- lock_release.lua: write back cached values and hand a shared lock over, atomically.
--
-- KEYS[1] lock, KEYS[2] queue, KEYS[3] alive (as in lock_acquire.lua)
-- KEYS[4..] values written back: taskq:{shared}:value:<name>
-- ARGV[1] token, ARGV[2] now ms, ARGV[3] stale ms, ARGV[4] lease ms, ARGV[5..] the values
--
-- Only the owner may release: anyone else gets {-1, ''} and nothing is written (its
-- lease expired and someone else may have changed the values since). The lock goes
-- straight to the first live waiter, who is told through its grant list by the caller.
-- Returns {1, next owner}, or {0, ''} when nobody waits (the lock is then free).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, ''} end
for i = 4, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'KEEPTTL') end
local now, stale = tonumber(ARGV[2]), tonumber(ARGV[3])
while true do
  local head = redis.call('LPOP', KEYS[2])
  if not head then
    redis.call('DEL', KEYS[1])
    return {0, ''}
  end
  local seen = redis.call('ZSCORE', KEYS[3], head)
  redis.call('ZREM', KEYS[3], head)
  if seen and now - tonumber(seen) < stale then
    redis.call('SET', KEYS[1], head, 'PX', ARGV[4])
    return {1, head}
  end
end
