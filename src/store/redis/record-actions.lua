-- The audit trail's append (LedgerStore.recordActions, src/store/port.ts).
-- twin: src/store/memory.ts MemoryStore.recordActions (one kept would-delete per image; the
-- others are appended in order).
-- ARGV: prefix, then per action: atMs, image id, '1' if a would-delete, the record's JSON.
-- Returns one 1 (kept) or 0 (a repeated would-delete) per action.
local P = ARGV[1]
local kept = {}
for o = 2, #ARGV, 4 do
  local at, image, would_delete, json = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  if would_delete == '1' and redis.call('ZADD', P .. 'would-delete', 'NX', at, image) == 0 then
    kept[#kept + 1] = 0
  else
    local seq = redis.call('INCR', P .. 'actions:seq')
    redis.call('ZADD', P .. 'actions', at, string.format('%016d', seq) .. json)
    kept[#kept + 1] = 1
  end
end
return kept
