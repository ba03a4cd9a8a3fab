-- lock_acquire.lua: take a shared lock (taskq.Lock) or queue up for it, in one call.
--
-- KEYS[1] lock     taskq:{shared}:lock:<name>         owner token, with a PX lease
-- KEYS[2] queue    taskq:{shared}:lock:<name>:queue   FIFO list of waiting tokens
-- KEYS[3] alive    taskq:{shared}:lock:<name>:alive   zset waiting token -> last poll (ms)
-- ARGV[1] token (one per process), ARGV[2] now ms, ARGV[3] stale ms, ARGV[4] lease ms
--
-- Already ours: renewed. Free: ours if nobody live is queued ahead of us (waiters whose
-- last poll is older than the stale time are dropped). Else we are queued (once) and
-- our poll time recorded. Returns {1, token} when taken, else {0, owner or first waiter}:
-- the caller asks that process to hand the lock over, then waits on its grant list.

local owner = redis.call('GET', KEYS[1])
local token, now, stale = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if owner == token then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('ZREM', KEYS[3], token)
  redis.call('LREM', KEYS[2], 0, token)
  return {1, token}
end
if not owner then
  local head = redis.call('LINDEX', KEYS[2], 0)
  while head and head ~= token do
    local seen = redis.call('ZSCORE', KEYS[3], head)
    if seen and now - tonumber(seen) < stale then break end
    redis.call('LPOP', KEYS[2])
    redis.call('ZREM', KEYS[3], head)
    head = redis.call('LINDEX', KEYS[2], 0)
  end
  if not head or head == token then
    if head then redis.call('LPOP', KEYS[2]) end
    redis.call('ZREM', KEYS[3], token)
    redis.call('SET', KEYS[1], token, 'PX', ARGV[4])
    return {1, token}
  end
  owner = head
end
redis.call('ZADD', KEYS[3], now, token)
if not redis.call('LPOS', KEYS[2], token) then redis.call('RPUSH', KEYS[2], token) end
return {0, owner}
