-- LedgerStore.forgetDeadImagesBefore (src/store/port.ts), one slice: up to ARGV[3] dead records
-- updated before ARGV[2] (seconds, exclusive; a batch that revives a record takes it out of
-- 'dead'), with the totals hash of a project left with nothing to count.
-- twin: src/store/memory.ts MemoryStore.forgetDeadImagesBefore
-- ARGV: prefix, before, limit. Returns { records dropped, ids looked at }.
local P, before, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = 0
local ids = redis.call('ZRANGEBYSCORE', P .. 'dead', '-inf', '(' .. before, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  redis.call('ZREM', P .. 'dead', id)
  local project = redis.call('HGET', P .. 'image:' .. id, 'project')
  if project then
    -- The mark ('pass') goes with the hash. A dead record is in neither 'live' nor
    -- 'removable:<project>' (apply.lua keeps them so); only its project's 'created:' holds it.
    redis.call('DEL', P .. 'image:' .. id)
    redis.call('ZREM', P .. 'created:' .. project, id)
    local t = redis.call('HMGET', P .. 'totals:' .. project, 'count', 'uploading', 'size', 'stage')
    local empty = true
    for k = 1, 4 do if (tonumber(t[k]) or 0) ~= 0 then empty = false end end
    if empty then redis.call('DEL', P .. 'totals:' .. project) redis.call('ZREM', P .. 'live-projects', project) end
    n = n + 1
  end
end
return { n, #ids }
