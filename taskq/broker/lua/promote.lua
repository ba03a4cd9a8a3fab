-- promote.lua: move retries whose backoff has passed back into the queue stream.
--
-- KEYS[1] delayed  taskq:{q}:delayed   members "<attempt>|<sig>|<body>", score = due ms
-- KEYS[2] stream   taskq:{q}:stream
-- ARGV[1] now ms, ARGV[2] most entries to move
-- Returns the number of entries moved.

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local attempt, sig, body = string.match(member, '^(%d+)|([^|]*)|(.*)$')
  if body then
    if sig ~= '' then
      redis.call('XADD', KEYS[2], '*', 'm', body, 's', sig, 'n', attempt)
    else
      redis.call('XADD', KEYS[2], '*', 'm', body, 'n', attempt)
    end
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
