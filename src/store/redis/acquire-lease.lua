-- A lease taken over from its holder when it is this holder's own (extended) or expired
-- (LedgerStore.acquireLease, src/store/port.ts). The adapter first tries SET NX PX, which takes
-- a free name in one step; this script is the rest, atomic like every script.
-- twin: src/store/memory.ts MemoryStore.acquireLease
-- ARGV: prefix, name, holder, until (ms), now (ms), ttl (ms, > 0). Returns 1 granted, 0 refused.
-- The value is "<until> <holder>": expiry is judged by the caller's clock (as every store does);
-- PX only lets Redis drop a lease nobody renews, so that names never pile up.
local key = ARGV[1] .. 'lease:' .. ARGV[2]
local holder, untilMs, now, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local current = redis.call('GET', key)
if current then
  local space = string.find(current, ' ', 1, true)
  local heldUntil = tonumber(string.sub(current, 1, space - 1))
  if string.sub(current, space + 1) ~= holder and heldUntil > now then return 0 end
end
redis.call('SET', key, untilMs .. ' ' .. holder, 'PX', ttl)
return 1
