-- Admission: one create reserved for a project, atomically for every gate sharing the database.
-- twin: src/quota/admission.ts judgeAdmission, and LedgerStore.reserveCreate (src/store/port.ts)
-- in the other stores; test/contract/admission.contract.ts holds them equal.
-- Keys, under the prefix P: `P reservations:<project>`, a sorted set of reservation ids scored by
-- their expiry (ms); the key itself expires with its newest reservation. `P totals:<project>` is
-- the ledger's (apply.lua).
-- ARGV: prefix, project, nowMs, expiresAtMs, reservation id, count limit ('' unlimited), rate
-- count ('' unlimited), recent creates. Returns { admitted (0/1), count, reserved before }.
local P, project, now, expires, id = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local key = P .. 'reservations:' .. project
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local reserved = redis.call('ZCARD', key)
local count = tonumber(redis.call('HGET', P .. 'totals:' .. project, 'count')) or 0
-- judgeAdmission: (count + reserved) < image_count_total, (recent + reserved) < the rate's count
if ARGV[6] ~= '' and count + reserved >= tonumber(ARGV[6]) then return {0, count, reserved} end
if ARGV[7] ~= '' and tonumber(ARGV[8]) + reserved >= tonumber(ARGV[7]) then return {0, count, reserved} end
redis.call('ZADD', key, expires, id)
-- Relative to the caller's clock, not Redis's: the key goes with its newest reservation.
if redis.call('PTTL', key) < expires - now then redis.call('PEXPIRE', key, math.max(1, expires - now)) end
return {1, count, reserved}
