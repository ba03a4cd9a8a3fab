-- renew.lua: renew the lease of the entries this node holds, in one call.
--
-- KEYS[1] stream   taskq:{q}:stream
-- ARGV[1] group, ARGV[2] consumer (this node), ARGV[3] most entries to read per XPENDING,
-- ARGV[4] lowest id, ARGV[5] highest id to look at ('-', '+': all),
-- ARGV[6..] the entry ids to renew (none: every entry the consumer owns in the range)
--
-- The node renews what it holds in slices of sorted ids (broker.Broker.renew), each its
-- own call over its own id range, so one call never blocks Redis for long: the
-- consumer's pending entries between two of its own held ids are that slice, plus any
-- delivered to a claim it never read. A range longer than ARGV[3] is read in pages.
--
-- XCLAIM … JUSTID to the same consumer resets the entry's idle time (the lease clock)
-- without counting a delivery. Only entries still owned by this node are touched, so a
-- node that lost a lease never steals it back. Entries the node owns but did not list
-- (delivered to a claim it never read) are left to expire and be reclaimed.
-- Returns the number of entries renewed.

local stream, group, consumer, most = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local wanted = nil
if #ARGV > 5 then
  wanted = {}
  for i = 6, #ARGV do
    wanted[ARGV[i]] = true
  end
end
local ids = {}
local start = ARGV[4]
while true do
  local pending = redis.call('XPENDING', stream, group, start, ARGV[5], most, consumer)
  for _, e in ipairs(pending) do
    if wanted == nil or wanted[e[1]] then
      ids[#ids + 1] = e[1]
    end
  end
  if #pending < most or wanted == nil then break end  -- all of it (or, unlisted: capped)
  start = '(' .. pending[#pending][1]
end
-- unpack() must be the last argument to expand fully, so build each call's list.
for s = 1, #ids, 500 do
  local args = {stream, group, consumer, 0}
  for j = s, math.min(s + 499, #ids) do
    args[#args + 1] = ids[j]
  end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return #ids
