import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import type { ApplyResult, ApplyOutcome } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import { usageFromTotals, type UsageTotals } from '../ledger/usage.js';
import type { ImageEvent } from '../notification/parse.js';
import type { Usage } from '../quota/resources.js';
import { ConfigError } from '../errors.js';
import type { AdmissionBounds } from '../quota/admission.js';
import type { ActionRecord, ApplyOptions, CreateReservation, LedgerStore } from './port.js';
import { RELEASE_RESERVATIONS_LUA, RESERVE_CREATE_LUA } from './redis-admission.js';
import { StoreDataError, StoreUnavailableError } from '../errors.js';
import { assertStorable } from './storable.js';
import { redactUrl } from '../redact.js';
import { isRemovable, newestFirst } from '../quota/decide.js';

/**
 * Keys, all under the prefix P:
 *   P image:<image id>     hash: the record (project, status, size ('' = null), created, updated,
 *                          ts, msg, importing, protected, deleted; numbers as JS's String(n))
 *   P images-of:<project>  set of the project's image ids (tombstones included)
 *   P projects             set of projects with at least one live image (totals count > 0)
 *   P dead                 sorted set: image id of a dead record (tombstoned, killed, ...) -> its
 *                          updated_at (s), what forgetDeadImagesBefore purges by
 *   P totals:<project>     hash count, uploading, size, stage: the project's UsageTotals
 *   P seen                 sorted set: processed message id -> when (ms)
 *   P actions              sorted set: audit record -> atMs; member = 16-digit sequence + JSON
 *   P actions:seq          the audit sequence (ties on atMs keep insertion order)
 *   P would-delete         sorted set: image id -> atMs of its one kept would-delete record
 *   P state                hash: the enforcer's own small values (getState / setState)
 */
const FIELDS_PER_EVENT = 11;

/**
 * `applyEventsTo` (src/ledger/apply.ts) in Lua, so that a batch is one atomic step on the server.
 * Redis runs a script alone, so concurrent batches from any number of processes are serialised
 * whole: each one sees the effects of every batch before it, exactly as one transaction would.
 *
 * A script that fails part-way keeps the writes it had made, so all reads and the whole
 * computation come first (phase 1, which writes nothing) and the writes last (phase 2), which are
 * plain commands on keys of known types.
 *
 * ARGV: prefix, nowMs, mode ('1' dedupe, '0' no dedupe, 'o' overwrite: Glance's word replaces the
 * record outright, see ApplyOptions.overwrite), then 11 fields per event (see `eventArgs`).
 * Returns { outcomes ('a' applied / 'd' duplicate, one per event), changed project ids... }.
 */
const APPLY_LUA = `
local P, now, dedupe, overwrite = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[3] == 'o'

-- usage.ts: DEAD, UPLOADING, STAGING
local DEAD = { killed = true, pending_delete = true, deleted = true }
local UPLOADING = { saving = true, uploading = true, importing = true }
local STAGING = { uploading = true, importing = true }

-- record.ts compareVersion, last step: JS compares strings by UTF-16 code unit. The bytes of
-- UTF-8 compare by code point, which agrees except that a 4-byte sequence (above U+FFFF, a
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

-- record.ts compareVersion: (updatedAt, timestamp, messageId). The numbers travel as JS's
-- String(n) and tonumber() gives back the same double, so they compare exactly as in JS
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

-- record.ts mergeRecord: the newest version's state; the tombstone is sticky.
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

-- apply.ts sameRecord: every field
local function same(a, b)
  for _, f in ipairs({ 'msg', 'deleted', 'project', 'status', 'size', 'created', 'updated', 'ts', 'importing', 'protected' }) do
    if a[f] ~= b[f] then return false end
  end
  return true
end

-- usage.ts contributionOf: count, uploading, sizeBytes, stageBytes
local function contribution(r)
  if r.deleted == '1' or DEAD[r.status] then return 0, 0, 0, 0 end
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

local n = (#ARGV - 3) / ${FIELDS_PER_EVENT}
for i = 1, n do
  local o = 3 + (i - 1) * ${FIELDS_PER_EVENT}
  local event = {
    msg = ARGV[o + 1], project = ARGV[o + 2], image = ARGV[o + 3], status = ARGV[o + 4], size = ARGV[o + 5],
    created = ARGV[o + 6], updated = ARGV[o + 7], ts = ARGV[o + 8], importing = ARGV[o + 9],
    protected = ARGV[o + 10], deleted = ARGV[o + 11],
  }
  -- apply.ts: a message id seen before, in the store or earlier in this batch, is a duplicate
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
    -- apply.ts: before = tx.get; after = mergeRecord; unchanged -> nothing; else put and deltas
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
local expected = { [P .. 'projects'] = 'set', [P .. 'dead'] = 'zset' }
for _, id in ipairs(staged_order) do
  expected[P .. 'images-of:' .. staged[id].project] = 'set'
  if current[id] then expected[P .. 'images-of:' .. current[id].project] = 'set' end
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

-- Phase 2: write.
for _, id in ipairs(marked) do redis.call('ZADD', P .. 'seen', now, id) end
for _, id in ipairs(staged_order) do
  local r = staged[id]
  local args = {}
  for _, f in ipairs(RECORD_FIELDS) do
    args[#args + 1] = f
    args[#args + 1] = r[f]
  end
  redis.call('HSET', P .. 'image:' .. id, unpack(args))
  local old = current[id]
  if old and old.project ~= r.project then
    redis.call('SREM', P .. 'images-of:' .. old.project, id)
  end
  redis.call('SADD', P .. 'images-of:' .. r.project, id)
  if r.deleted == '1' or DEAD[r.status] then
    redis.call('ZADD', P .. 'dead', r.updated, id)
  else
    redis.call('ZREM', P .. 'dead', id)
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
    redis.call('SADD', P .. 'projects', project)
  else
    redis.call('SREM', P .. 'projects', project)
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
`;

/**
 * The audit trail's append. ARGV: prefix, then per action: atMs, image id, '1' if a would-delete,
 * the record's JSON. Returns one 1 (kept) or 0 (a repeated would-delete) per action.
 */
const RECORD_ACTIONS_LUA = `
local P = ARGV[1]
local kept = {}
for o = 2, #ARGV, 4 do
  local at, image, would_delete, json = ARGV[o], ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  if would_delete == '1' and redis.call('ZADD', P .. 'would-delete', 'NX', at, image) == 0 then
    kept[#kept + 1] = 0
  else
    local seq = redis.call('INCR', P .. 'actions:seq')
    redis.call('ZADD', P .. 'actions', at, string.format('%016d', seq) .. json)
    kept[#kept + 1] = 1
  end
end
return kept
`;

/**
 * forgetDeadImagesBefore, one slice: up to ARGV[3] dead records updated before ARGV[2] (seconds,
 * exclusive; a batch that revives a record takes it out of 'dead'), with the totals
 * hash of a project left with nothing to count. ARGV: prefix, before, limit. Returns { records
 * dropped, ids looked at }.
 */
const FORGET_DEAD_LUA = `
local P, before, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = 0
local ids = redis.call('ZRANGEBYSCORE', P .. 'dead', '-inf', '(' .. before, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  redis.call('ZREM', P .. 'dead', id)
  local project = redis.call('HGET', P .. 'image:' .. id, 'project')
  if project then
    redis.call('DEL', P .. 'image:' .. id)
    redis.call('SREM', P .. 'images-of:' .. project, id)
    local t = redis.call('HMGET', P .. 'totals:' .. project, 'count', 'uploading', 'size', 'stage')
    local empty = true
    for k = 1, 4 do if (tonumber(t[k]) or 0) ~= 0 then empty = false end end
    if empty then redis.call('DEL', P .. 'totals:' .. project) redis.call('SREM', P .. 'projects', project) end
    n = n + 1
  end
end
return { n, #ids }
`;

/** A project's records, read in one atomic step. ARGV: prefix, project id. */
const IMAGES_LUA = `
local P = ARGV[1]
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'images-of:' .. ARGV[2])) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', P .. 'image:' .. id)
end
return out
`;

interface LedgerScripts {
  gqeReserveCreate(...args: string[]): Promise<[number, number, number]>;
  gqeReleaseReservations(...args: string[]): Promise<number>;
  gqeApply(...args: string[]): Promise<string[]>;
  gqeRecordActions(...args: string[]): Promise<number[]>;
  gqeImages(prefix: string, projectId: string): Promise<(string | string[])[]>;
  gqeForgetDead(prefix: string, before: string, limit: string): Promise<[number, number]>;
}

function eventArgs(e: ImageEvent): string[] {
  return [
    e.messageId,
    e.projectId,
    e.imageId,
    e.status,
    e.size === null ? '' : String(e.size),
    String(e.createdAt),
    String(e.updatedAt),
    String(e.timestamp),
    e.importing,
    e.protected ? '1' : '0',
    e.deleted ? '1' : '0',
  ];
}

function recordFromHash(imageId: string, flat: readonly string[]): ImageRecord {
  const h = new Map<string, string>();
  for (let i = 0; i + 1 < flat.length; i += 2) h.set(flat[i]!, flat[i + 1]!);
  const get = (k: string) => h.get(k) ?? '';
  return {
    imageId,
    projectId: get('project'),
    status: get('status'),
    size: get('size') === '' ? null : Number(get('size')),
    createdAt: Number(get('created')),
    updatedAt: Number(get('updated')),
    timestamp: Number(get('ts')),
    messageId: get('msg'),
    importing: get('importing'),
    protected: get('protected') === '1',
    deleted: get('deleted') === '1',
  };
}

/** The URL without its password, plus the key prefix: what to look at in redis-cli. */
function describeUrl(url: string, keyPrefix: string): string {
  const base = redactUrl(url).replace(/[?#][\s\S]*$/, '');
  return `${/^[a-z]+:\/\/[^/]*$/i.test(base) ? `${base}/0` : base} keys ${keyPrefix}*`;
}

export interface RedisStoreOptions {
  /** Every key starts with it, so several ledgers (or other applications) can share a database. */
  keyPrefix?: string;
}

export const DEFAULT_REDIS_KEY_PREFIX = 'gqe:';

/**
 * The ledger in Redis, shared by any number of consumer processes. A batch is one Lua script
 * (EVALSHA, falling back to EVAL) that runs the ledger's rules on the server, so it is atomic and
 * serialised with every other batch; see APPLY_LUA. Needs Redis 5 or newer; for Redis Cluster,
 * put a hash tag in the prefix (`{gqe}:`) so all keys live in one slot.
 *
 * @example
 *   const store = await RedisStore.open('redis://:secret@cache.example.com:6379/0', { keyPrefix: 'gqe:' });
 *   await store.applyEvents(events, Date.now());
 */
export class RedisStore implements LedgerStore {
  readonly description: string;
  private readonly redis: Redis & LedgerScripts;
  private readonly prefix: string;

  private constructor(redis: Redis, keyPrefix: string, description: string) {
    redis.defineCommand('gqeApply', { numberOfKeys: 0, lua: APPLY_LUA });
    redis.defineCommand('gqeRecordActions', { numberOfKeys: 0, lua: RECORD_ACTIONS_LUA });
    redis.defineCommand('gqeImages', { numberOfKeys: 0, lua: IMAGES_LUA, readOnly: true });
    redis.defineCommand('gqeForgetDead', { numberOfKeys: 0, lua: FORGET_DEAD_LUA });
    redis.defineCommand('gqeReserveCreate', { numberOfKeys: 0, lua: RESERVE_CREATE_LUA });
    redis.defineCommand('gqeReleaseReservations', { numberOfKeys: 0, lua: RELEASE_RESERVATIONS_LUA });
    this.redis = redis as Redis & LedgerScripts;
    this.prefix = keyPrefix;
    this.description = description;
  }

  /** Connects (failing at once, with the reason, when Redis cannot be reached). */
  static async open(url: string, options: RedisStoreOptions = {}): Promise<RedisStore> {
    const keyPrefix = options.keyPrefix ?? DEFAULT_REDIS_KEY_PREFIX;
    if (keyPrefix === '') throw new ConfigError(`REDIS_KEY_PREFIX: must not be empty; for example ${DEFAULT_REDIS_KEY_PREFIX}`);
    const description = describeUrl(url, keyPrefix);
    // Fail a command after one retry instead of holding it through a long outage: the consumer then
    // retries the batch with its own backoff, counts the store error and reports not ready.
    const redis = new Redis(url, { lazyConnect: true, connectTimeout: 10_000, maxRetriesPerRequest: 1 });
    // Reported by the failing command; without a listener ioredis would print every reconnect attempt.
    let lastError: Error | undefined;
    redis.on('error', (err: Error) => {
    lastError = err;
  });
    try {
      await redis.connect();
      await redis.ping();
    } catch (err) {
      redis.disconnect();
      // connect() only says "Connection is closed."; the socket's own error says why.
      const reason = (lastError ?? (err as Error)).message;
      throw new StoreUnavailableError(`STORE_URL: cannot connect to Redis at ${description} (${reason}); check the host, port, database and password`, { cause: lastError ?? err });
    }
    return new RedisStore(redis, keyPrefix, description);
  }

  async applyEvents(events: readonly ImageEvent[], nowMs: number, options: ApplyOptions = {}): Promise<ApplyResult> {
    if (events.length === 0) return { outcomes: [], projects: [] };
    assertStorable(events);
    const args = [this.prefix, String(nowMs), options.overwrite ? 'o' : options.dedupe ?? true ? '1' : '0', ...events.flatMap(eventArgs)];
    const [codes = '', n = '0', ...rest] = await this.redis.gqeApply(...args).catch((err: Error) => {
      // The script's own bound check: the same batch would fail forever, so the pipeline bisects it.
      throw /\bGQE_DATA\b/.test(err.message) ? new StoreDataError(err.message.replace(/^.*?GQE_DATA /, 'Redis refused the batch: '), { cause: err }) : err;
    });
    const outcomes = [...codes].map((c): ApplyOutcome => (c === 'd' ? 'duplicate' : 'applied'));
    const projects = rest.slice(0, Number(n));
    const totals = new Map<string, UsageTotals>();
    projects.forEach((p, i) => {
      const at = projects.length + 4 * i;
      if (rest[at] !== '') totals.set(p, { count: Number(rest[at]), uploading: Number(rest[at + 1]), sizeBytes: Number(rest[at + 2]), stageBytes: Number(rest[at + 3]) });
    });
    return { outcomes, projects: projects.sort(), totals };
  }

  async usage(projectId: string): Promise<Usage> {
    const [count, uploading, size, stage] = await this.redis.hmget(`${this.prefix}totals:${projectId}`, 'count', 'uploading', 'size', 'stage');
    // A project never applied has no hash: every field is null, and so zero.
    return usageFromTotals({ count: Number(count ?? 0), uploading: Number(uploading ?? 0), sizeBytes: Number(size ?? 0), stageBytes: Number(stage ?? 0) });
  }

  async images(projectId: string): Promise<ImageRecord[]> {
    const flat = await this.redis.gqeImages(this.prefix, projectId);
    const records: ImageRecord[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) records.push(recordFromHash(flat[i] as string, flat[i + 1] as string[]));
    return records.sort((a, b) => (a.imageId < b.imageId ? -1 : a.imageId > b.imageId ? 1 : 0));
  }

  async removableImages(projectId: string, limit: number): Promise<ImageRecord[]> {
    // No secondary index in Redis: the project's records are read and filtered here.
    return (await this.images(projectId)).filter(isRemovable).sort(newestFirst).slice(0, limit);
  }

  async projects(): Promise<string[]> {
    return (await this.redis.smembers(`${this.prefix}projects`)).sort();
  }

  async forgetDeadImagesBefore(beforeMs: number): Promise<number> {
    // In slices, so that no single script holds Redis (and every other consumer) for long.
    const before = String(Math.ceil(beforeMs / 1000));
    let total = 0;
    for (;;) {
      const [dropped, looked] = await this.redis.gqeForgetDead(this.prefix, before, '1000');
      total += dropped;
      if (looked < 1000) return total;
    }
  }

  async forgetMessagesBefore(beforeMs: number): Promise<number> {
    return this.redis.zremrangebyscore(`${this.prefix}seen`, '-inf', `(${beforeMs}`);
  }

  async recordActions(actions: readonly ActionRecord[]): Promise<ActionRecord[]> {
    if (actions.length === 0) return [];
    const args = [this.prefix];
    for (const a of actions) {
      const json = JSON.stringify({ atMs: a.atMs, projectId: a.projectId, imageId: a.imageId, action: a.action, reason: a.reason, over: a.over, usage: a.usage, limits: a.limits });
      args.push(String(a.atMs), a.imageId, a.action === 'would-delete' ? '1' : '0', json);
    }
    const kept = await this.redis.gqeRecordActions(...args);
    return actions.filter((_, i) => kept[i] === 1);
  }

  /** Oldest first: by `atMs`, then in the order recorded. */
  async actions(query: { projectId?: string; sinceMs?: number } = {}): Promise<ActionRecord[]> {
    const members = await this.redis.zrangebyscore(`${this.prefix}actions`, query.sinceMs ?? '-inf', '+inf');
    return members
      .map((m) => JSON.parse(m.slice(16)) as ActionRecord)
      .filter((a) => query.projectId === undefined || a.projectId === query.projectId);
  }

  async forgetActionsBefore(beforeMs: number): Promise<number> {
    // A would-delete marker goes with its record (as SQLite's partial unique index row does).
    const results = await this.redis
      .multi()
      .zremrangebyscore(`${this.prefix}actions`, '-inf', `(${beforeMs}`)
      .zremrangebyscore(`${this.prefix}would-delete`, '-inf', `(${beforeMs}`)
      .exec();
    const [err, removed] = results?.[0] ?? [new Error('Redis MULTI was discarded'), 0];
    if (err) throw err;
    return Number(removed);
  }

  async getState(key: string): Promise<string | undefined> {
    return (await this.redis.hget(`${this.prefix}state`, key)) ?? undefined;
  }

  async setState(key: string, value: string): Promise<void> {
    await this.redis.hset(`${this.prefix}state`, key, value);
  }

  async reserveCreate(projectId: string, bounds: AdmissionBounds, nowMs: number, expiresAtMs: number): Promise<CreateReservation> {
    const [admitted, count, reserved] = await this.redis.gqeReserveCreate(
      this.prefix, projectId, String(nowMs), String(expiresAtMs), randomUUID(),
      bounds.countLimit === undefined ? '' : String(bounds.countLimit),
      bounds.rate ? String(bounds.rate.count) : '', String(bounds.rate?.recent ?? 0),
    );
    return { admitted: admitted === 1, count: Number(count), reserved: Number(reserved) };
  }

  async releaseReservations(creates: ReadonlyMap<string, number>, nowMs: number): Promise<number> {
    const pairs = [...creates].filter(([, n]) => n > 0).flatMap(([p, n]) => [p, String(n)]);
    if (pairs.length === 0) return 0;
    return Number(await this.redis.gqeReleaseReservations(this.prefix, String(nowMs), ...pairs));
  }

  async close(): Promise<void> {
    if (this.redis.status !== 'end') await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
