-- reclaim.lua: take over entries whose lease expired (their node died or stalled).
--
-- KEYS[1] stream   taskq:{q}:stream
-- ARGV[1] group, ARGV[2] consumer (this node), ARGV[3] lease ms (min idle), ARGV[4] count
--
-- Each expired entry is XCLAIMed with the same min-idle, so two nodes reclaiming at once
-- cannot both get it; the claim counts a delivery. Entries deleted while pending are
-- acked away. Returns {{id, deliveries, {field, value, ...}}, ...}; the caller runs them
-- or dead-letters those past the delivery limit.

local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
local out = {}
for _, e in ipairs(pending) do
  local id = e[1]
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)
  local entry = claimed[1]
  if entry and entry[2] then
    out[#out + 1] = {id, e[4] + 1, entry[2]}
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
  end
end
return out
