-- handback.lua: give claimed-but-unstarted entries back to the queue at once
-- (graceful shutdown), instead of leaving them to wait out a lease.
--
-- KEYS[1] stream   taskq:{q}:stream
-- ARGV[1] group, ARGV[2] consumer (this node), ARGV[3..] entry ids
--
-- Each entry this node still owns is re-added (same fields, new id) and the old one is
-- acked and deleted, in one atomic step. Returns the number handed back.

local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local owner = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if owner[1] ~= nil and owner[1][2] == ARGV[2] then
    local entry = redis.call('XRANGE', KEYS[1], id, id)
    if entry[1] then
      redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    n = n + 1
  end
end
return n
