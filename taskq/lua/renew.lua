-- renew.lua: renew the lease of every entry this node owns, in one call.
--
-- KEYS[1] stream   taskq:{q}:stream
-- ARGV[1] group, ARGV[2] consumer (this node), ARGV[3] most entries to renew
--
-- XCLAIM … JUSTID to the same consumer resets the entry's idle time (the lease clock)
-- without counting a delivery. Only entries still owned by this node are touched, so a
-- node that lost a lease never steals it back.
-- Returns the number of entries renewed.

local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[3], ARGV[2])
local ids = {}
for i, e in ipairs(pending) do
  ids[i] = e[1]
end
-- unpack() must be the last argument to expand fully, so build each call's list.
for s = 1, #ids, 500 do
  local args = {KEYS[1], ARGV[1], ARGV[2], 0}
  for j = s, math.min(s + 499, #ids) do
    args[#args + 1] = ids[j]
  end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return #ids
