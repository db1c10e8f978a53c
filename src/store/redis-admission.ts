/*
 * The Redis twin of the admission rule (src/quota/admission.ts `judgeAdmission`) and of the
 * reservation steps of the store port, run as scripts so that each is one atomic step for every
 * gate sharing the database. The contract suite (test/contract/admission.contract.ts) holds them
 * equal to the TypeScript of the other stores.
 *
 * Keys, under the prefix P: `P reservations:<project>`, a sorted set of reservation ids scored
 * by their expiry (ms); the key itself expires with its newest reservation. `P totals:<project>`
 * is the ledger's (src/store/redis.ts).
 */

/**
 * ARGV: prefix, project, nowMs, expiresAtMs, reservation id, count limit ('' unlimited), rate
 * count ('' unlimited), recent creates. Returns { admitted (0/1), count, reserved before }.
 */
export const RESERVE_CREATE_LUA = `
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
`;

/** ARGV: prefix, nowMs, then per project: id, how many to end. Returns how many open ones ended. */
export const RELEASE_RESERVATIONS_LUA = `
local P, now = ARGV[1], tonumber(ARGV[2])
local ended = 0
for i = 3, #ARGV, 2 do
  local key = P .. 'reservations:' .. ARGV[i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local n = tonumber(ARGV[i + 1])
  if n > 0 then ended = ended + #redis.call('ZPOPMIN', key, n) / 2 end
end
return ended
`;
