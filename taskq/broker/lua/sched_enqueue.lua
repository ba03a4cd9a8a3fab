-- sched_enqueue.lua: queue one run of a periodic task, fenced by the scheduler's lease.
--
-- KEYS[1] lock    taskq:{q}:sched:lock   must name this node (else nothing happens)
-- KEYS[2] last    taskq:{q}:sched:last   hash: schedule name -> last run queued (scheduled ms)
-- KEYS[3] stream  taskq:{q}:stream
-- KEYS[4] stats   taskq:{q}:stats        counter: enqueued
--
-- ARGV[1] node id, ARGV[2] schedule name, ARGV[3] the run's scheduled time ms,
-- ARGV[4] body ('' = only record ARGV[3] as the starting point if there is none yet),
-- ARGV[5] signature ('' = unsigned)
--
-- Recording the run in the same step as its XADD is what makes a failover exact: a new
-- lease holder continues from the last recorded run (nothing missed), and a run at or
-- before it is never queued again (nothing doubled), even by a holder that lost its
-- lease while paused. Returns 1 queued, 0 already queued (or started), -1 not the holder.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local at = tonumber(ARGV[3])
if ARGV[4] == '' then
  redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
  return 0
end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '-1')
if at <= last then return 0 end
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'm', ARGV[4], 's', ARGV[5])
else
  redis.call('XADD', KEYS[3], '*', 'm', ARGV[4])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[4], 'enqueued', 1)
return 1
