-- The one-time build of the indexes over a ledger written before they existed (RedisStore.open,
-- src/store/redis.ts `buildIndexes`), one slice of image keys at a time: what apply.lua would
-- have kept for each record, read from the record as it is now. Idempotent: a key SCAN returns
-- twice, a slice run again by a second replica opening at the same time, and a record a batch
-- wrote since (apply.lua already indexed it) all end the same way.
-- twin: apply.lua, phase 2's indexes and 'live-projects'
-- ARGV: prefix, then image keys (the whole key, prefix included, as SCAN gives it).
-- Returns how many records it indexed.
local P = ARGV[1]
local DEAD = { killed = true, pending_delete = true, deleted = true }
local n, dropped = 0, {}
for i = 2, #ARGV do
  local key = ARGV[i]
  local id = string.sub(key, #P + #'image:' + 1)
  local h = redis.call('HMGET', key, 'project', 'status', 'created', 'deleted')
  local project, status, created, deleted = h[1], h[2], h[3], h[4]
  if project then
    -- The previous layout's set of the project's ids: 'created:<project>' holds the same now.
    if not dropped[project] then
      redis.call('UNLINK', P .. 'images-of:' .. project)
      dropped[project] = true
    end
    redis.call('ZADD', P .. 'created:' .. project, created, id)
    -- Entries are removed as well as added, so that a build run again (`P schema` deleted by hand)
    -- also repairs a record a writer of the previous version changed meanwhile.
    local live = not (deleted == '1' or DEAD[status])
    if live then
      redis.call('ZADD', P .. 'live', 0, id)
      redis.call('ZADD', P .. 'live-projects', 0, project)
    else
      redis.call('ZREM', P .. 'live', id)
    end
    if live and status == 'queued' then
      redis.call('ZADD', P .. 'removable:' .. project, created, id)
    else
      redis.call('ZREM', P .. 'removable:' .. project, id)
    end
    n = n + 1
  end
end
return n
