-- rq_cancel.lua: cancel one job of taskq.rq that no node has claimed yet.
--
-- KEYS[1] stream   taskq:{q}:stream
-- KEYS[2] delayed  taskq:{q}:delayed       retries waiting out their backoff
-- KEYS[3] record   taskq:{q}:rq:job:<id>   hash {entry, func, at, status}
-- ARGV[1] group, ARGV[2] the job's entry id ('' = none known),
-- ARGV[3] its delayed-set member ('' = none known)
--
-- A pending entry belongs to a node (the job has started): left alone. Otherwise the
-- entry (or the delayed member) is deleted and the record says canceled, in one step, so
-- a node can never claim a job this call reports as canceled.
-- Returns 'canceled', 'started' or 'gone'.

local stream, delayed, record = KEYS[1], KEYS[2], KEYS[3]
local group, entry, member = ARGV[1], ARGV[2], ARGV[3]
local removed = false
if entry ~= '' then
  local ok, owner = pcall(redis.call, 'XPENDING', stream, group, entry, entry, 1)
  if ok and owner[1] ~= nil then
    return 'started'
  end
  removed = redis.call('XDEL', stream, entry) == 1
end
if not removed and member ~= '' then
  removed = redis.call('ZREM', delayed, member) == 1
end
if not removed then
  return 'gone'
end
redis.call('HSET', record, 'status', 'canceled')
return 'canceled'
