-- One page of reconcile's sweep (LedgerStore.unmarkedLive, src/store/port.ts): live records whose
-- mark is not the pass's, walked through 'live' (every live image id, score 0) in the ids' byte
-- order. An id never changes, so a record live for the whole walk is met exactly once, whatever
-- else changes (its owner, its created_at), and the cursor is simply the last id looked at.
-- twin: src/store/memory.ts MemoryStore.unmarkedLive
-- ARGV: prefix, pass id, cursor ('' from the start), limit, budget (at most this many ids looked
-- at, so that a walk over a ledger the pass has mostly marked holds Redis for a bounded time).
-- Returns { next cursor ('' at the end), then image id, its hash as a flat list, ... }.
local P, pass, cursor, limit, budget = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local DEAD = { killed = true, pending_delete = true, deleted = true }
local from = cursor == '' and '-' or '(' .. cursor
local ids = redis.call('ZRANGEBYLEX', P .. 'live', from, '+', 'LIMIT', 0, budget)
local out = { '' }
local found, last = 0, nil
for i, id in ipairs(ids) do
  last = i
  local key = P .. 'image:' .. id
  local h = redis.call('HMGET', key, 'pass', 'status', 'deleted')
  -- twin: src/ledger/usage.ts isLive (the index says live; the hash is the record)
  if h[1] ~= pass and h[2] and h[3] ~= '1' and not DEAD[h[2]] then
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', key)
    found = found + 1
    if found == limit then break end
  end
end
-- More may follow unless the range ran out before both the budget and the page were full.
if last and (#ids == budget or found == limit) then out[1] = ids[last] end
return out
