-- dedup_enqueue.lua: queue a task under a dedup key unless the key already names one.
--
-- KEYS[1] stream   taskq:{q}:stream          the queue
-- KEYS[2] stats    taskq:{q}:stats           counter: enqueued
-- KEYS[3] delayed  taskq:{q}:delayed         for a task applied with a delay (score = due ms)
-- KEYS[4] dedup    taskq:{q}:dedup:<key>     "<task id>|<ttl ms>|<entry id>" (entry '' if delayed)
-- KEYS[5] waiters  taskq:{q}:dedupw:<key>    set of client ids waiting for that task
--
-- ARGV[1] task id, ARGV[2] body, ARGV[3] signature ('' = unsigned),
-- ARGV[4] dedup TTL ms after completion (0: released at completion),
-- ARGV[5] hold ms (the key's expiry while the task is queued or running: a safety net
--         for a task that never completes, e.g. Redis lost it),
-- ARGV[6] due ms (0: queue now), ARGV[7] the calling client's id (joins the waiters).
--
-- The check and the XADD are one step: concurrent applies with one key queue one task.
-- The completion script (complete.lua) pushes the outcome to every waiter's inbox and
-- releases the key (or leaves it to the TTL). Returns {1, record} when this call queued
-- the task, {0, record} when the key already named one (this client is then a waiter).

local current = redis.call('GET', KEYS[4])
if current then
  redis.call('SADD', KEYS[5], ARGV[7])
  local left = redis.call('PTTL', KEYS[4])
  if left > 0 then redis.call('PEXPIRE', KEYS[5], left) end
  return {0, current}
end
local body, sig, due = ARGV[2], ARGV[3], tonumber(ARGV[6])
local entry = ''
if due > 0 then
  redis.call('ZADD', KEYS[3], due, '1|' .. sig .. '|' .. body)
elseif sig ~= '' then
  entry = redis.call('XADD', KEYS[1], '*', 'm', body, 's', sig)
else
  entry = redis.call('XADD', KEYS[1], '*', 'm', body)
end
local record = ARGV[1] .. '|' .. ARGV[4] .. '|' .. entry
redis.call('SET', KEYS[4], record, 'PX', ARGV[5])
redis.call('DEL', KEYS[5])
redis.call('HINCRBY', KEYS[2], 'enqueued', 1)
return {1, record}
