-- enqueue_delayed.lua: queue tasks that must wait (apply(delay=/eta=)): into the delayed
-- set, counted as enqueued in the same step. promote.lua moves them to the stream when due.
--
-- KEYS[1] delayed  taskq:{q}:delayed   members "<attempt>|<sig>|<body>", score = due ms
-- KEYS[2] stats    taskq:{q}:stats     counter: enqueued
-- ARGV pairs: due ms, packed member ("1|<sig>|<body>")
-- Returns the number of tasks queued.

local n = 0
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  n = n + 1
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'enqueued', n) end
return n
