-- cancel.lua: cancel one task by its stream entry, atomically against a node's claim.
--
-- KEYS[1] stream     taskq:{q}:stream
-- KEYS[2] stats      taskq:{q}:stats       counter 'cancelled'
-- KEYS[3] cancelled  taskq:{q}:cancelled   tombstones (task id -> 1) of claimed tasks
-- KEYS[4] result     taskq:{q}:result:<task>         (used if ARGV[6] == '1')
-- KEYS[5] inbox      taskq:{q}:inbox:<client>        (used if ARGV[7] == '1')
-- KEYS[6] batch      taskq:{q}:batch:<id>            (used if ARGV[8] == '1')
-- KEYS[7] events     taskq:{q}:batch:<id>:events
--
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] task id, ARGV[4] the cancelled outcome JSON,
-- ARGV[5] result TTL ms, ARGV[6..8] flags (result, inbox, batch), ARGV[9] tombstone TTL ms
--
-- Queued (in the stream, delivered to no node): deleted and recorded as cancelled here,
-- so no node ever starts it. Claimed (pending under a node): a tombstone is written and
-- the owner is returned, for the caller to tell that node. Gone: nothing.
-- Returns {0, ''} gone, {1, ''} cancelled while queued, {2, owner} claimed by owner.

local stream, id = KEYS[1], ARGV[2]
local entry = redis.call('XRANGE', stream, id, id)
if entry[1] == nil then
  return {0, ''}
end
local owner = redis.call('XPENDING', stream, ARGV[1], id, id, 1)
if owner[1] ~= nil then
  redis.call('HSET', KEYS[3], ARGV[3], '1')
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
  return {2, owner[1][2]}
end
redis.call('XDEL', stream, id)
redis.call('HINCRBY', KEYS[2], 'cancelled', 1)
local outcome, ttl = ARGV[4], ARGV[5]
if ARGV[6] == '1' then
  redis.call('SET', KEYS[4], outcome, 'PX', ttl)
end
if ARGV[7] == '1' then
  redis.call('RPUSH', KEYS[5], '[' .. outcome .. ']')
  redis.call('PEXPIRE', KEYS[5], ttl)
end
if ARGV[8] == '1' then
  local batch = KEYS[6]
  local cancelled = redis.call('HINCRBY', batch, 'cancelled', 1)
  local done = tonumber(redis.call('HGET', batch, 'done') or '0')
  local failed = tonumber(redis.call('HGET', batch, 'failed') or '0')
  local total = tonumber(redis.call('HGET', batch, 'total') or '-1')
  if total >= 0 and done + failed + cancelled >= total then
    redis.call('LPUSH', KEYS[7], '1')
    redis.call('PEXPIRE', KEYS[7], ttl)
  end
end
return {1, ''}
