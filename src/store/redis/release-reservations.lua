-- Admission: reservations ended once their creates are counted (LedgerStore.releaseReservations,
-- src/store/port.ts). twin: the other stores' releaseReservations.
-- ARGV: prefix, nowMs, then per project: id, how many to end. Returns how many open ones ended.
local P, now = ARGV[1], tonumber(ARGV[2])
local ended = 0
for i = 3, #ARGV, 2 do
  local key = P .. 'reservations:' .. ARGV[i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local n = tonumber(ARGV[i + 1])
  if n > 0 then ended = ended + #redis.call('ZPOPMIN', key, n) / 2 end
end
return ended
