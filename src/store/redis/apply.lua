-- The ledger's apply step, run by Redis as one script so that a batch is one atomic step on the
-- server. The TypeScript original is src/ledger/apply.ts `applyEventsTo` (with record.ts and
-- usage.ts); each function below names its twin as "-- twin: FILE NAME". A change to a rule is
-- made in both; test/contract/ledger-store.contract.ts (every store) and the property tests in
-- test/unit/properties.test.ts hold Redis to the in-process stores.
--
-- Redis runs a script alone, so concurrent batches from any number of processes are serialised
-- whole: each one sees the effects of every batch before it, exactly as one transaction would.
-- A script that fails part-way keeps the writes it had made, so all reads and the whole
-- computation come first (phase 1, which writes nothing) and the writes last (phase 2), which are
-- plain commands on keys of known types.
--
-- ARGV: prefix, nowMs, mode ('1' dedupe, '0' no dedupe, 'o' overwrite: Glance's word replaces the
-- record outright, see ApplyOptions.overwrite in src/store/port.ts), then FIELDS_PER_EVENT fields
-- per event (src/store/redis.ts `eventArgs`). Returns { outcomes ('a' applied / 'd' duplicate, one
-- per event), the number of changed projects, their ids, then each one's totals }.

-- The length of redis.ts eventArgs: with any other number every batch is misread, which the
-- contract suite's first apply shows.
local FIELDS_PER_EVENT = 11

local P, now, dedupe, overwrite = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[3] == 'o'

-- twin: src/ledger/usage.ts DEAD, UPLOADING, STAGING
local DEAD = { killed = true, pending_delete = true, deleted = true }
local UPLOADING = { saving = true, uploading = true, importing = true }
local STAGING = { uploading = true, importing = true }

-- twin: src/ledger/record.ts compareVersion, its last step (the message ids). JS compares
-- strings by UTF-16 code unit. The bytes of UTF-8 compare by code point, which agrees except that a 4-byte sequence (above U+FFFF, a
-- surrogate pair in UTF-16) must sort below U+E000..U+FFFF: so lead bytes F0..F4 rank between
-- ED and EE. (Lua's own '<' uses the server's locale, so it is not used.)
local function rank(b)
  if b >= 0xF0 then return 0xED + (b - 0xEF) / 8 end
  return b
end
local function compare_strings(a, b)
  if a == b then return 0 end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return rank(x) < rank(y) and -1 or 1 end
  end
  return #a < #b and -1 or 1
end

-- twin: src/ledger/record.ts compareVersion: (updatedAt, timestamp, messageId). The numbers
-- travel as JS's String(n) and tonumber() gives back the same double, so they compare exactly as in JS
-- (microsecond timestamps, ~1.8e15, are far below 2^53).
local function compare_version(a, b)
  local au, bu = tonumber(a.updated), tonumber(b.updated)
  if au ~= bu then return au < bu and -1 or 1 end
  local at, bt = tonumber(a.ts), tonumber(b.ts)
  if at ~= bt then return at < bt and -1 or 1 end
  return compare_strings(a.msg, b.msg)
end

local function copy(r)
  local c = {}
  for k, v in pairs(r) do c[k] = v end
  return c
end

-- twin: src/ledger/record.ts mergeRecord: the newest version's state; the tombstone is sticky.
local function merge(existing, event)
  if not existing then return event end
  local winner = existing
  if compare_version(event, existing) > 0 then winner = event end
  local deleted = (existing.deleted == '1' or event.deleted == '1') and '1' or '0'
  if winner.deleted == deleted then return winner end
  local r = copy(winner)
  r.deleted = deleted
  return r
end

-- twin: src/ledger/apply.ts sameRecord: every field
local function same(a, b)
  for _, f in ipairs({ 'msg', 'deleted', 'project', 'status', 'size', 'created', 'updated', 'ts', 'importing', 'protected' }) do
    if a[f] ~= b[f] then return false end
  end
  return true
end

-- twin: src/ledger/usage.ts isLive
local function live(r)
  return not (r.deleted == '1' or DEAD[r.status])
end

-- twin: src/quota/decide.ts isRemovable: what `P removable:<project>` holds
local function removable(r)
  return r.status == 'queued' and live(r)
end

-- twin: src/ledger/usage.ts contributionOf: count, uploading, sizeBytes, stageBytes
local function contribution(r)
  if not live(r) then return 0, 0, 0, 0 end
  local importing = r.importing ~= ''
  local size = 0
  if r.size ~= '' then
    local s = tonumber(r.size)
    if s > 0 then size = s end
  end
  local uploading = (UPLOADING[r.status] or importing) and 1 or 0
  local stage = (STAGING[r.status] or importing) and size or 0
  return 1, uploading, size, stage
end

local RECORD_FIELDS = { 'project', 'status', 'size', 'created', 'updated', 'ts', 'msg', 'importing', 'protected', 'deleted' }

-- twin: src/ledger/apply.ts applyEventsTo, from here to the end of phase 1.
-- Phase 1: read and compute; nothing is written.
local current = {}   -- image id -> its record before the batch, or false
local function load(id)
  if current[id] == nil then
    local h = redis.call('HGETALL', P .. 'image:' .. id)
    if #h == 0 then
      current[id] = false
    else
      local r = {}
      for i = 1, #h, 2 do r[h[i]] = h[i + 1] end
      current[id] = r
    end
  end
  return current[id] or nil
end

local outcomes, marked, marked_set = {}, {}, {}
local staged, staged_order = {}, {}
local deltas, delta_order, changed, changed_list = {}, {}, {}, {}
local function add_delta(project, r, sign)
  local c, u, s, t = contribution(r)
  local d = deltas[project]
  if not d then
    d = { 0, 0, 0, 0 }
    deltas[project] = d
    delta_order[#delta_order + 1] = project
  end
  d[1], d[2], d[3], d[4] = d[1] + sign * c, d[2] + sign * u, d[3] + sign * s, d[4] + sign * t
end
local function touch(project)
  if not changed[project] then
    changed[project] = true
    changed_list[#changed_list + 1] = project
  end
end

local n = (#ARGV - 3) / FIELDS_PER_EVENT
for i = 1, n do
  local o = 3 + (i - 1) * FIELDS_PER_EVENT
  local event = {
    msg = ARGV[o + 1], project = ARGV[o + 2], image = ARGV[o + 3], status = ARGV[o + 4], size = ARGV[o + 5],
    created = ARGV[o + 6], updated = ARGV[o + 7], ts = ARGV[o + 8], importing = ARGV[o + 9],
    protected = ARGV[o + 10], deleted = ARGV[o + 11],
  }
  -- twin: apply.ts applyEventsTo: a message id seen before, in the store or earlier in this
  -- batch, is a duplicate
  local duplicate = false
  if dedupe then
    if marked_set[event.msg] or redis.call('ZSCORE', P .. 'seen', event.msg) then
      duplicate = true
    else
      marked_set[event.msg] = true
      marked[#marked + 1] = event.msg
    end
  end
  if duplicate then
    outcomes[i] = 'd'
  else
    outcomes[i] = 'a'
    -- twin: apply.ts applyEventsTo: before = tx.get; after = mergeRecord (recordFromEvent when
    -- overwriting); unchanged -> nothing; else put and deltas
    local before = staged[event.image] or load(event.image)
    local after = overwrite and event or merge(before, event)
    if not (before and same(before, after)) then
      if not staged[event.image] then staged_order[#staged_order + 1] = event.image end
      staged[event.image] = after
      if before then
        add_delta(before.project, before, -1)
        touch(before.project)
      end
      add_delta(after.project, after, 1)
      touch(after.project)
    end
  end
end

-- Phase 1, last step: every key written below must have its type or not exist, so that no
-- write can fail half-way (image hashes and the seen set were read above, which checked them).
local expected = { [P .. 'live-projects'] = 'zset', [P .. 'dead'] = 'zset', [P .. 'live'] = 'zset' }
for _, id in ipairs(staged_order) do
  local projects = { staged[id].project }
  if current[id] then projects[2] = current[id].project end
  for _, project in ipairs(projects) do
    expected[P .. 'created:' .. project] = 'zset'
    expected[P .. 'removable:' .. project] = 'zset'
  end
end
for _, project in ipairs(delta_order) do expected[P .. 'totals:' .. project] = 'hash' end
for key, kind in pairs(expected) do
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= kind then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. kind .. ': the batch was not applied')
  end
end

-- Phase 1, bounds: no HINCRBY below may fail (an overflow would abort the script half-way, after
-- 'seen' was written). Totals stay within 2^53, where doubles (Lua's numbers, and JS's) are exact.
local MAX_TOTAL = 9007199254740991
local TOTAL_FIELDS = { 'count', 'uploading', 'size', 'stage' }
local after_totals = {}
for _, project in ipairs(delta_order) do
  local d = deltas[project]
  local current_totals = redis.call('HMGET', P .. 'totals:' .. project, unpack(TOTAL_FIELDS))
  local after = {}
  after_totals[project] = after
  for k = 1, 4 do
    local total = (tonumber(current_totals[k]) or 0) + d[k]
    after[k] = total
    if total > MAX_TOTAL or total < -MAX_TOTAL then
      return redis.error_reply('GQE_DATA project ' .. project .. ': its ' .. TOTAL_FIELDS[k] .. ' total would reach ' ..
        string.format('%.0f', total) .. ', past 2^53, which the ledger cannot keep exactly: the batch was not applied')
    end
  end
end

-- Phase 2: write (the in-process stores' LedgerTransaction.put and markSeen, and their totals).
for _, id in ipairs(marked) do redis.call('ZADD', P .. 'seen', now, id) end
for _, id in ipairs(staged_order) do
  local r = staged[id]
  local args = {}
  for _, f in ipairs(RECORD_FIELDS) do
    args[#args + 1] = f
    args[#args + 1] = r[f]
  end
  -- HSET, not DEL and rewrite: the hash's other fields (reconcile's 'pass' mark) outlive a merge.
  redis.call('HSET', P .. 'image:' .. id, unpack(args))
  -- The indexes (see the key layout in src/store/redis.ts), in step with the record.
  local old = current[id]
  if old and old.project ~= r.project then
    redis.call('ZREM', P .. 'created:' .. old.project, id)
    redis.call('ZREM', P .. 'removable:' .. old.project, id)
  end
  redis.call('ZADD', P .. 'created:' .. r.project, r.created, id)
  if removable(r) then
    redis.call('ZADD', P .. 'removable:' .. r.project, r.created, id)
  else
    redis.call('ZREM', P .. 'removable:' .. r.project, id)
  end
  if live(r) then
    redis.call('ZREM', P .. 'dead', id)
    redis.call('ZADD', P .. 'live', 0, id)
  else
    redis.call('ZADD', P .. 'dead', r.updated, id)
    redis.call('ZREM', P .. 'live', id)
  end
end
-- Sizes are whole bytes; sums stay exact in doubles up to 2^53 (8 PiB), checked above, and are
-- written as integers ('%.0f'), because HINCRBY takes no exponent.
for _, project in ipairs(delta_order) do
  local d = deltas[project]
  for k = 1, 4 do
    if d[k] ~= 0 then redis.call('HINCRBY', P .. 'totals:' .. project, TOTAL_FIELDS[k], string.format('%.0f', d[k])) end
  end
  if (tonumber(redis.call('HGET', P .. 'totals:' .. project, 'count')) or 0) > 0 then
    redis.call('ZADD', P .. 'live-projects', 0, project)
  else
    redis.call('ZREM', P .. 'live-projects', project)
  end
end

-- The outcomes, the number of changed projects and their ids, then each changed project's new
-- totals (count, uploading, size, stage), so that deciding for them needs no second read.
local reply = { table.concat(outcomes), tostring(#changed_list) }
for _, project in ipairs(changed_list) do reply[#reply + 1] = project end
for _, project in ipairs(changed_list) do
  local t = after_totals[project]
  for k = 1, 4 do reply[#reply + 1] = t and string.format('%.0f', t[k]) or '' end
end
return reply
