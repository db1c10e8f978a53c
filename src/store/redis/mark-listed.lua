-- Reconcile's mark (LedgerStore.markListed, src/store/port.ts): the field 'pass' on each listed
-- image's hash. apply.lua writes a record with HSET, never DEL, so the mark outlives later merges.
-- twin: src/store/memory.ts MemoryStore.markListed
-- ARGV: prefix, pass id, image ids. Returns how many were marked.
local P, pass = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV do
  local key = P .. 'image:' .. ARGV[i]
  -- HSET on a missing key would create a record of one field, which every read would misread.
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'pass', pass)
    n = n + 1
  end
end
return n
