-- A project's records, read in one atomic step (LedgerStore.images, src/store/port.ts).
-- twin: src/store/memory.ts MemoryStore.images
-- ARGV: prefix, project id. Returns { image id, its hash as a flat list, ... }.
local P = ARGV[1]
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'images-of:' .. ARGV[2])) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', P .. 'image:' .. id)
end
return out
