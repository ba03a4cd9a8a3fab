-- rq_enqueue.lua: queue rq-shaped jobs (taskq.rq), each with its job record, atomically.
--
-- KEYS[1] stream   taskq:{q}:stream        the queue
-- KEYS[2] stats    taskq:{q}:stats         counter: enqueued
-- KEYS[3..]        taskq:{q}:rq:job:<id>   one per job: hash {entry, func, at, status}
--
-- ARGV[1] 1 = only if the job record does not exist yet (import, unique=True), else 0
-- ARGV[2] record TTL ms, ARGV[3] now (seconds, as text)
-- then 3 fields per job, in KEYS order: body, signature ('' = unsigned), task name
--
-- With ARGV[1] = 1 the record is the dedupe marker: it is written in the same step as
-- the XADD, so a job is in the stream once however often an interrupted import reruns.
-- Returns, per job, the new entry id, or false where the record existed (not queued).

local nx, ttl, now = ARGV[1] == '1', tonumber(ARGV[2]), ARGV[3]
local out, added = {}, 0
for k = 3, #KEYS do
  local i = 4 + (k - 3) * 3
  local record = KEYS[k]
  if nx and redis.call('EXISTS', record) == 1 then
    out[#out + 1] = false
  else
    local body, sig = ARGV[i], ARGV[i + 1]
    local entry
    if sig ~= '' then
      entry = redis.call('XADD', KEYS[1], '*', 'm', body, 's', sig)
    else
      entry = redis.call('XADD', KEYS[1], '*', 'm', body)
    end
    redis.call('DEL', record)
    redis.call('HSET', record, 'entry', entry, 'func', ARGV[i + 2], 'at', now)
    redis.call('PEXPIRE', record, ttl)
    out[#out + 1] = entry
    added = added + 1
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[2], 'enqueued', added) end
return out
