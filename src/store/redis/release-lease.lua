-- Ends a lease only if this holder still has it (LedgerStore.releaseLease, src/store/port.ts).
-- twin: src/store/memory.ts MemoryStore.releaseLease
-- ARGV: prefix, name, holder. Returns 1 ended, 0 not this holder's (or none).
local key = ARGV[1] .. 'lease:' .. ARGV[2]
local current = redis.call('GET', key)
if not current then return 0 end
local space = string.find(current, ' ', 1, true)
if string.sub(current, space + 1) ~= ARGV[3] then return 0 end
redis.call('DEL', key)
return 1
