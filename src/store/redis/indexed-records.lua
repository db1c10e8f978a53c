-- Records read through one of a project's sorted-set indexes, in one atomic step:
-- LedgerStore.images ('created:<project>', everything), removableImages ('removable:<project>',
-- newest first, at most the limit) and imagesCreatedSince ('created:<project>' from a time).
-- The work is the ids the range holds, never the project's whole history.
-- twin: src/store/memory.ts MemoryStore.images, removableImages, imagesCreatedSince
-- ARGV: prefix, index key (after the prefix), 'asc' or 'desc', min score, max score, limit (''
-- for all). Returns { image id, its hash as a flat list, ... }.
local P, index, order, min, max, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ids
-- ZREVRANGEBYSCORE orders equal scores by member, descending: the larger id first, as
-- src/quota/decide.ts newestFirst does for equal created_at.
if order == 'desc' then
  if limit == '' then ids = redis.call('ZREVRANGEBYSCORE', P .. index, max, min)
  else ids = redis.call('ZREVRANGEBYSCORE', P .. index, max, min, 'LIMIT', 0, limit) end
else
  if limit == '' then ids = redis.call('ZRANGEBYSCORE', P .. index, min, max)
  else ids = redis.call('ZRANGEBYSCORE', P .. index, min, max, 'LIMIT', 0, limit) end
end
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', P .. 'image:' .. id)
end
return out
