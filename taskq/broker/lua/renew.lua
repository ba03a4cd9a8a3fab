-- renew.lua: renew the lease of the entries this node holds, in one call.
--
-- KEYS[1] stream   taskq:{q}:stream
-- ARGV[1] group, ARGV[2] consumer (this node), ARGV[3] most entries to look at,
-- ARGV[4..] the entry ids to renew (none: every entry the consumer owns)
--
-- XCLAIM … JUSTID to the same consumer resets the entry's idle time (the lease clock)
-- without counting a delivery. Only entries still owned by this node are touched, so a
-- node that lost a lease never steals it back. Entries the node owns but did not list
-- (delivered to a claim it never read) are left to expire and be reclaimed.
-- Returns the number of entries renewed.

local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[3], ARGV[2])
local wanted = nil
if #ARGV > 3 then
  wanted = {}
  for i = 4, #ARGV do
    wanted[ARGV[i]] = true
  end
end
local ids = {}
for _, e in ipairs(pending) do
  if wanted == nil or wanted[e[1]] then
    ids[#ids + 1] = e[1]
  end
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
