-- complete.lua: report many task outcomes in one call.
--
-- KEYS[1] stream   taskq:{q}:stream     the queue; entries are acked and deleted here
-- KEYS[2] stats    taskq:{q}:stats      counters: done, failed, retried, dead, suppressed
-- KEYS[3] delayed  taskq:{q}:delayed    retries waiting for their backoff (score = due ms)
-- KEYS[4] dead     taskq:{q}:dead       dead-letter stream
-- KEYS[5..]        result / inbox / batch / batch-events keys, referenced by index below
--                  (and, for a dedup task, its dedup and waiters keys: see release_dedup)
--
-- ARGV[1] group, ARGV[2] consumer (this node), ARGV[3] result TTL ms, ARGV[4] now ms,
-- then 8 fields per outcome:
--   entry id, kind (ok|fail|retry|dead|cancelled), result key index (0 = none),
--   inbox key index (0 = none), batch key index (0 = none; events key is index + 1),
--   outcome JSON, x1, x2
--   retry: x1 = packed entry "<attempt>|<sig>|<body>", x2 = due time ms
--   dead:  x1 = packed entry, x2 = reason
--
-- Ownership: an outcome is applied only if this node still owns the entry (its pending
-- entry names ARGV[2]). A node that lost its lease and reports late changes nothing;
-- its report is counted as suppressed. Ownership is read with one XPENDING over this
-- consumer's pending entries between the lowest and the highest id reported (a scan of
-- its own pending list only), not one XPENDING per entry; an id that a truncated range
-- did not reach is looked up alone.
-- Returns {applied, suppressed}.

local stream, stats, delayed, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer = ARGV[1], ARGV[2]
local ttl, now = tonumber(ARGV[3]), ARGV[4]
local n_done, n_failed, n_retried, n_dead, n_suppressed = 0, 0, 0, 0, 0
local n_cancelled = 0  -- a cancelled task: neither done nor failed
local inbox_items = {}
local batch_counts = {}
local acked = {}

-- Dedup (dedup_enqueue.lua): a task id "dd-<hex of the key>-..." holds the key
-- taskq:{q}:dedup:<key>. Its outcome also goes to the clients waiting on that key; then
-- the key is released, or left to expire after its TTL (computed names: same {q} slot).
local prefix = string.sub(stream, 1, #stream - 6)
local function release_dedup(result_key, outcome)
  local tid = string.match(result_key, ':result:(dd%-%x+%-.*)$')
  if tid == nil then return end
  local key = (string.gsub(string.match(tid, '^dd%-(%x+)%-'), '%x%x',
                           function(h) return string.char(tonumber(h, 16)) end))
  local dk, wk = prefix .. 'dedup:' .. key, prefix .. 'dedupw:' .. key
  for _, client in ipairs(redis.call('SMEMBERS', wk)) do
    local inbox = prefix .. 'inbox:' .. client
    redis.call('RPUSH', inbox, '[' .. outcome .. ']')
    redis.call('PEXPIRE', inbox, ttl)
  end
  redis.call('DEL', wk)
  local record = redis.call('GET', dk)
  if record and string.sub(record, 1, #tid + 1) == tid .. '|' then
    local keep = tonumber(string.match(record, '^[^|]*|(%d+)|')) or 0
    if keep > 0 then redis.call('PEXPIRE', dk, keep) else redis.call('DEL', dk) end
  end
end

-- Stream ids "ms-seq" compare as number pairs (ms < 2^53: exact in a Lua number).
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end

local owned = {}  -- id -> true: pending under this consumer
local lo, hi, n_reports = nil, nil, 0
for i = 5, #ARGV, 8 do
  local id = ARGV[i]
  n_reports = n_reports + 1
  if lo == nil or id_less(id, lo) then lo = id end
  if hi == nil or id_less(hi, id) then hi = id end
end
local reach = nil  -- the highest id the range read covers, if it was truncated
if n_reports > 0 then
  local limit = 2 * n_reports + 64
  local rows = redis.call('XPENDING', stream, group, lo, hi, limit, consumer)
  for _, row in ipairs(rows) do owned[row[1]] = true end
  if #rows >= limit then reach = rows[#rows][1] end
end
local function owns(id)
  if owned[id] then return true end
  if reach == nil or not id_less(reach, id) then return false end
  local row = redis.call('XPENDING', stream, group, id, id, 1)
  return row[1] ~= nil and row[1][2] == consumer
end

for i = 5, #ARGV, 8 do
  local id, kind = ARGV[i], ARGV[i + 1]
  local rk, ik, bk = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local outcome, x1, x2 = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  if not owns(id) then
    n_suppressed = n_suppressed + 1
  else
    acked[#acked + 1] = id
    if kind == 'retry' then
      redis.call('ZADD', delayed, x2, x1)
      n_retried = n_retried + 1
    else
      if kind == 'ok' then
        n_done = n_done + 1
      elseif kind == 'cancelled' then
        n_cancelled = n_cancelled + 1
      else
        n_failed = n_failed + 1
      end
      if kind == 'dead' then
        redis.call('XADD', dead, '*', 'entry', id, 'packed', x1, 'reason', x2,
                   'error', outcome, 'node', consumer, 'at', now)
        n_dead = n_dead + 1
      end
      if rk > 0 then
        redis.call('SET', KEYS[rk], outcome, 'PX', ttl)
        release_dedup(KEYS[rk], outcome)
      end
      if ik > 0 then
        local items = inbox_items[ik]
        if items == nil then
          items = {}
          inbox_items[ik] = items
        end
        items[#items + 1] = outcome
      end
      if bk > 0 then
        local c = batch_counts[bk]
        if c == nil then
          c = {0, 0, 0}
          batch_counts[bk] = c
        end
        if kind == 'ok' then
          c[1] = c[1] + 1
        elseif kind == 'cancelled' then
          c[3] = c[3] + 1
        else
          c[2] = c[2] + 1
        end
      end
    end
  end
end

-- XACK/XDEL in slices: unpack() is bounded by the Lua stack.
for s = 1, #acked, 500 do
  local slice = {unpack(acked, s, math.min(s + 499, #acked))}
  redis.call('XACK', stream, group, unpack(slice))
  redis.call('XDEL', stream, unpack(slice))
end

for ik, items in pairs(inbox_items) do
  -- RPUSH: the producer pops from the left, so replies arrive oldest first.
  redis.call('RPUSH', KEYS[ik], '[' .. table.concat(items, ',') .. ']')
  redis.call('PEXPIRE', KEYS[ik], ttl)
end

for bk, c in pairs(batch_counts) do
  local batch = KEYS[bk]
  local done = redis.call('HINCRBY', batch, 'done', c[1])
  local failed = redis.call('HINCRBY', batch, 'failed', c[2])
  local cancelled = tonumber(redis.call('HGET', batch, 'cancelled') or '0')
  if c[3] > 0 then cancelled = redis.call('HINCRBY', batch, 'cancelled', c[3]) end
  local total = tonumber(redis.call('HGET', batch, 'total') or '-1')
  if total >= 0 and done + failed + cancelled >= total then
    redis.call('LPUSH', KEYS[bk + 1], '1')
    redis.call('PEXPIRE', KEYS[bk + 1], ttl)
  end
end

if n_done > 0 then redis.call('HINCRBY', stats, 'done', n_done) end
if n_failed > 0 then redis.call('HINCRBY', stats, 'failed', n_failed) end
if n_retried > 0 then redis.call('HINCRBY', stats, 'retried', n_retried) end
if n_dead > 0 then redis.call('HINCRBY', stats, 'dead', n_dead) end
if n_cancelled > 0 then redis.call('HINCRBY', stats, 'cancelled', n_cancelled) end
if n_suppressed > 0 then redis.call('HINCRBY', stats, 'suppressed', n_suppressed) end
return {#acked, n_suppressed}
