-- reclaim.lua: take over entries whose lease expired (their node died or stalled).
--
-- KEYS[1] stream   taskq:{q}:stream
-- ARGV[1] group, ARGV[2] consumer (this node), ARGV[3] lease ms (min idle),
-- ARGV[4] most entries to take (up to 100 more are looked at, to pass over suspects),
-- ARGV[5] suspects this node may take: entries that already lost two nodes (possible
--         poison); the node takes at most one at a time, so a task that kills its node
--         cannot keep taking healthy tasks down with it (their counts stay low)
-- ARGV[6] 1 = take the other expired entries too, 0 = suspects and dead ones only
-- ARGV[7] max deliveries: an entry past it is always taken, to be dead-lettered, not run
--
-- (XPENDING and XCLAIM run in one script: nothing can take an entry in between.)
--
-- Each expired entry is XCLAIMed with the same min-idle, so two nodes reclaiming at once
-- cannot both get it; the claim counts a delivery. Entries deleted while pending are
-- acked away. Returns {{id, deliveries, {field, value, ...}}, ...}; the caller runs them
-- or dead-letters those past the delivery limit.

local suspects, plain, max_deliveries = tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local count = tonumber(ARGV[4])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', count + 100)
local out = {}
for _, e in ipairs(pending) do
  if #out >= count then break end
  local id, deliveries = e[1], e[4] + 1
  local take = plain
  if deliveries > max_deliveries then
    take = true
  elseif e[4] >= 2 then
    take = suspects > 0
    if take then suspects = suspects - 1 end
  end
  if take then
    local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)
    local entry = claimed[1]
    if entry and entry[2] then
      out[#out + 1] = {id, deliveries, entry[2]}
    else
      redis.call('XACK', KEYS[1], ARGV[1], id)
    end
  end
end
return out
