-- sched_lease.lua: take, keep or give up the periodic scheduler's lease on a queue.
--
-- KEYS[1] lock  taskq:{q}:sched:lock   the holder's node id, with the lease as its expiry
-- ARGV[1] node id, ARGV[2] lease ms (0: release, if held by this node)
-- Returns 1 if this node holds the lease now, else 0.

local holder = redis.call('GET', KEYS[1])
if ARGV[2] == '0' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
