import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import type { ApplyResult, ApplyOutcome } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import { usageFromTotals, type UsageTotals } from '../ledger/usage.js';
import type { ImageEvent } from '../notification/parse.js';
import type { Usage } from '../quota/resources.js';
import { ENV_DEFAULTS } from '../config.js';
import { ConfigError } from '../errors.js';
import type { AdmissionBounds } from '../quota/admission.js';
import type { ActionRecord, ApplyOptions, CreateReservation, LedgerStore } from './port.js';
import { StoreDataError, StoreUnavailableError } from '../errors.js';
import { assertStorable } from './storable.js';
import { redactUrl } from '../redact.js';
import { newestFirst } from '../quota/decide.js';
import { LEDGER_SCRIPTS } from './redis/scripts.js';

/**
 * Keys, all under the prefix P:
 *   P image:<image id>     hash: the record (project, status, size ('' = null), created, updated,
 *                          ts, msg, importing, protected, deleted; numbers as JS's String(n)), and
 *                          `pass`, reconcile's mark (markListed), which apply.lua leaves alone
 *   P created:<project>    sorted set: every image id of the project (tombstones included) -> its
 *                          created_at (s): images, and the rate rule's window (imagesCreatedSince)
 *   P removable:<project>  sorted set: the project's live queued image ids -> created_at (s): the
 *                          count rule's candidates (removableImages), without the project's history
 *   P live                 sorted set: every live image id -> 0, walked in the ids' byte order by
 *                          reconcile's sweep (unmarkedLive)
 *   P live-projects        sorted set: projects with at least one live image (totals count > 0)
 *                          -> 0, paged in byte order (projects)
 *   P dead                 sorted set: image id of a dead record (tombstoned, killed, ...) -> its
 *                          updated_at (s), what forgetDeadImagesBefore purges by
 *   P totals:<project>     hash count, uploading, size, stage: the project's UsageTotals
 *   P seen                 sorted set: processed message id -> when (ms)
 *   P actions              sorted set: audit record -> atMs; member = 16-digit sequence + JSON
 *   P actions:seq          the audit sequence (ties on atMs keep insertion order)
 *   P would-delete         sorted set: image id -> atMs of its one kept would-delete record
 *   P state                hash: the enforcer's own small values (getState / setState)
 *   P schema               the layout's version, SCHEMA: below it (or missing, on a ledger that
 *                          holds records) the indexes are built at open (`buildIndexes`)
 *
 * apply.lua keeps the record, the indexes and the totals in step, in the batch's one script;
 * forget-dead.lua drops a record from them. Schema 1 (before the indexes) kept `P projects`, a
 * set, and `P images-of:<project>`, a set of ids; the build replaces them.
 *   P lease:<name>         string "<until ms> <holder>", with a PX expiry: acquireLease's lease
 */
const SCHEMA = 2;
/** Keys per SCAN slice of the indexes' build: one script of about this many records at a time. */
const SCAN_COUNT = 1000;
/** Ids per markListed script. */
const MARK_SLICE = 1000;
/** Ids one unmarkedLive page looks at, at most (or its limit, if larger): a bounded script. */
const SWEEP_BUDGET = 2000;

interface LedgerScripts {
  gqeReserveCreate(...args: string[]): Promise<[number, number, number]>;
  gqeReleaseReservations(...args: string[]): Promise<number>;
  gqeApply(...args: string[]): Promise<string[]>;
  gqeRecordActions(...args: string[]): Promise<number[]>;
  gqeIndexedRecords(prefix: string, index: string, order: 'asc' | 'desc', min: string, max: string, limit: string): Promise<(string | string[])[]>;
  gqeMarkListed(prefix: string, passId: string, ...imageIds: string[]): Promise<number>;
  gqeUnmarkedLive(prefix: string, passId: string, cursor: string, limit: string, budget: string): Promise<[string, ...(string | string[])[]]>;
  gqeIndexImages(prefix: string, ...imageKeys: string[]): Promise<number>;
  gqeForgetDead(prefix: string, before: string, limit: string): Promise<[number, number]>;
  gqeAcquireLease(prefix: string, name: string, holder: string, until: string, now: string, ttl: string): Promise<number>;
  gqeReleaseLease(prefix: string, name: string, holder: string): Promise<number>;
}

/** An event as apply.lua reads it: FIELDS_PER_EVENT strings, in this order. */
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

/** Pairs of an image id and its hash as a flat list, as the read scripts return them. */
function recordsFromFlat(flat: readonly (string | string[])[]): ImageRecord[] {
  const records: ImageRecord[] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) records.push(recordFromHash(flat[i] as string, flat[i + 1] as string[]));
  return records;
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

const TOTALS_FIELDS = ['count', 'uploading', 'size', 'stage'] as const;

/** A project's totals hash, read as TOTALS_FIELDS: a project never applied has no hash, every field null, and so zero. */
function usageOfFields([count, uploading, size, stage]: (string | null)[]): Usage {
  return usageFromTotals({ count: Number(count ?? 0), uploading: Number(uploading ?? 0), sizeBytes: Number(size ?? 0), stageBytes: Number(stage ?? 0) });
}

/**
 * The ledger in Redis, shared by any number of consumer processes. A batch is one Lua script
 * (EVALSHA, falling back to EVAL) that runs the ledger's rules on the server, so it is atomic and
 * serialised with every other batch; see redis/apply.lua, the twin of src/ledger/apply.ts. Needs Redis 5 or newer; for Redis Cluster,
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
    redis.defineCommand('gqeApply', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.apply });
    redis.defineCommand('gqeRecordActions', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.recordActions });
    redis.defineCommand('gqeIndexedRecords', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.indexedRecords, readOnly: true });
    redis.defineCommand('gqeMarkListed', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.markListed });
    redis.defineCommand('gqeUnmarkedLive', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.unmarkedLive, readOnly: true });
    redis.defineCommand('gqeIndexImages', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.indexImages });
    redis.defineCommand('gqeForgetDead', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.forgetDead });
    redis.defineCommand('gqeReserveCreate', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.reserveCreate });
    redis.defineCommand('gqeReleaseReservations', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.releaseReservations });
    redis.defineCommand('gqeAcquireLease', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.acquireLease });
    redis.defineCommand('gqeReleaseLease', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.releaseLease });
    this.redis = redis as Redis & LedgerScripts;
    this.prefix = keyPrefix;
    this.description = description;
  }

  /** Connects (failing at once, with the reason, when Redis cannot be reached). */
  static async open(url: string, options: RedisStoreOptions = {}): Promise<RedisStore> {
    const keyPrefix = options.keyPrefix ?? ENV_DEFAULTS.REDIS_KEY_PREFIX;
    if (keyPrefix === '') throw new ConfigError(`REDIS_KEY_PREFIX: must not be empty; for example ${ENV_DEFAULTS.REDIS_KEY_PREFIX}`);
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
      throw new StoreUnavailableError(`STORE_URL: cannot connect to Redis at ${description} (${reason}); check the host, port, database and password`, {
        cause: lastError ?? err,
      });
    }
    const store = new RedisStore(redis, keyPrefix, description);
    try {
      await store.buildIndexes();
    } catch (err) {
      redis.disconnect();
      throw err;
    }
    return store;
  }

  /**
   * Brings a ledger written before the indexes (schema 1, or no `P schema` at all) to SCHEMA, once:
   * each record is read and indexed as apply.lua would have, and the previous layout's sets are
   * dropped. It walks the image keys with SCAN, a slice of about SCAN_COUNT keys per script, rather
   * than one script over the whole ledger: Redis runs a script alone, and a million records in one
   * would stall every consumer and gate sharing the server for seconds. Writers of this version
   * keep the indexes themselves meanwhile, so the walk only has to see each record once (SCAN
   * guarantees that, and a key it returns twice is indexed twice, to the same effect); a replica
   * reading through the indexes before the build ends sees fewer candidates, which the next
   * notification or reconcile makes up. Writers of the previous version do not keep the indexes:
   * stop them before this version opens the ledger (or delete `P schema` after they stopped, and
   * the next open builds again).
   */
  private async buildIndexes(): Promise<void> {
    const P = this.prefix;
    const schema = await this.redis.get(`${P}schema`);
    if (schema !== null && !/^\d+$/.test(schema))
      throw new StoreDataError(`Redis key ${P}schema: expected a layout version such as ${SCHEMA}, got '${schema}'; check REDIS_KEY_PREFIX`);
    if (Number(schema) > SCHEMA)
      throw new StoreDataError(
        `Redis key ${P}schema: the ledger has layout ${schema}, newer than this version's ${SCHEMA}; run the newer enforcer or a new REDIS_KEY_PREFIX`,
      );
    if (Number(schema) === SCHEMA) return;
    // Every record of schema 1 was in `P projects` (live) or in `P dead`: with neither, there is
    // nothing to index, and a new ledger does not walk a database it may share with others.
    if ((await this.redis.exists(`${P}projects`, `${P}dead`)) > 0) {
      const match = `${P.replace(/[*?[\]\\]/g, '\\$&')}image:*`;
      let cursor = '0';
      do {
        const [next, keys] = await this.redis.scan(cursor, 'MATCH', match, 'COUNT', SCAN_COUNT);
        if (keys.length > 0) await this.redis.gqeIndexImages(P, ...keys);
        cursor = next;
      } while (cursor !== '0');
      await this.redis.unlink(`${P}projects`);
    }
    await this.redis.set(`${P}schema`, String(SCHEMA));
  }

  async applyEvents(events: readonly ImageEvent[], nowMs: number, options: ApplyOptions = {}): Promise<ApplyResult> {
    if (events.length === 0) return { outcomes: [], projects: [] };
    assertStorable(events);
    const args = [this.prefix, String(nowMs), options.overwrite ? 'o' : (options.dedupe ?? true) ? '1' : '0', ...events.flatMap(eventArgs)];
    const [codes = '', n = '0', ...rest] = await this.redis.gqeApply(...args).catch((err: Error) => {
      // The script's own bound check: the same batch would fail forever, so the pipeline bisects it.
      throw /\bGQE_DATA\b/.test(err.message) ? new StoreDataError(err.message.replace(/^.*?GQE_DATA /, 'Redis refused the batch: '), { cause: err }) : err;
    });
    const outcomes = [...codes].map((c): ApplyOutcome => (c === 'd' ? 'duplicate' : 'applied'));
    const projects = rest.slice(0, Number(n));
    const totals = new Map<string, UsageTotals>();
    projects.forEach((p, i) => {
      const at = projects.length + 4 * i;
      if (rest[at] !== '')
        totals.set(p, { count: Number(rest[at]), uploading: Number(rest[at + 1]), sizeBytes: Number(rest[at + 2]), stageBytes: Number(rest[at + 3]) });
    });
    // The mark after the batch, not in its script: only a reconcile's own writes carry one, and a
    // record written meanwhile is the pass's all the same (its listing showed it).
    if (options.listedBy !== undefined)
      await this.markListedOnly(
        events.map((e) => e.imageId),
        options.listedBy,
      );
    return { outcomes, projects: projects.sort(), totals };
  }

  async usage(projectId: string): Promise<Usage> {
    return usageOfFields(await this.redis.hmget(`${this.prefix}totals:${projectId}`, ...TOTALS_FIELDS));
  }

  async usages(projectIds: readonly string[]): Promise<Map<string, Usage>> {
    // One round trip: a pipeline of HMGETs, each a few fields of one small hash.
    const pipeline = this.redis.pipeline();
    for (const p of projectIds) pipeline.hmget(`${this.prefix}totals:${p}`, ...TOTALS_FIELDS);
    const replies = projectIds.length === 0 ? [] : ((await pipeline.exec()) ?? []);
    return new Map(
      projectIds.map((p, i) => {
        const [error, fields] = replies[i] ?? [new Error('no reply')];
        if (error) throw error;
        return [p, usageOfFields(fields as (string | null)[])];
      }),
    );
  }

  async images(projectId: string): Promise<ImageRecord[]> {
    return (await this.indexed(`created:${projectId}`, 'asc', '-inf', '+inf', '')).sort((a, b) => (a.imageId < b.imageId ? -1 : a.imageId > b.imageId ? 1 : 0));
  }

  async removableImages(projectId: string, limit: number): Promise<ImageRecord[]> {
    // The index orders equal created_at by the ids' bytes, newestFirst by UTF-16 code units: the
    // same for Glance's ASCII ids; the sort settles the page itself for any other.
    return (await this.indexed(`removable:${projectId}`, 'desc', '-inf', '+inf', String(limit))).sort(newestFirst);
  }

  async imagesCreatedSince(projectId: string, sinceSeconds: number): Promise<ImageRecord[]> {
    return this.indexed(`created:${projectId}`, 'asc', String(sinceSeconds), '+inf', '');
  }

  async projects(page?: { after: string; limit: number }): Promise<string[]> {
    const key = `${this.prefix}live-projects`;
    // Redis orders by bytes and JS by UTF-16 code units: the same for Keystone's ASCII ids. A page
    // follows Redis's order, so that a walk resumed from `after` never skips or repeats one.
    if (!page) return (await this.redis.zrange(key, 0, -1)).sort();
    return this.redis.zrangebylex(key, page.after === '' ? '-' : `(${page.after}`, '+', 'LIMIT', 0, page.limit);
  }

  async recordsOf(imageIds: readonly string[]): Promise<ImageRecord[]> {
    const ids = [...new Set(imageIds)];
    if (ids.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hgetall(`${this.prefix}image:${id}`);
    const replies = (await pipeline.exec()) ?? [];
    return ids.flatMap((id, i) => {
      const [err, hash] = replies[i] ?? [new Error('Redis pipeline returned no reply'), null];
      if (err) throw err;
      const fields = Object.entries(hash as Record<string, string>).flat();
      return fields.length === 0 ? [] : [recordFromHash(id, fields)];
    });
  }

  async markListed(imageIds: readonly string[], passId: string): Promise<ImageRecord[]> {
    // The records are read beside the mark (the mark is a field of its own, which no read returns).
    await this.markListedOnly(imageIds, passId);
    return this.recordsOf(imageIds);
  }

  /** In slices, so that one reconcile page of any size holds Redis for a bounded time. */
  private async markListedOnly(imageIds: readonly string[], passId: string): Promise<void> {
    for (let i = 0; i < imageIds.length; i += MARK_SLICE) await this.redis.gqeMarkListed(this.prefix, passId, ...imageIds.slice(i, i + MARK_SLICE));
  }

  async unmarkedLive(passId: string, cursor: string, limit: number): Promise<{ records: ImageRecord[]; cursor: string }> {
    if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError(`unmarkedLive: limit must be a whole number of at least 1, got ${limit}`);
    const [next, ...flat] = await this.redis.gqeUnmarkedLive(this.prefix, passId, cursor, String(limit), String(Math.max(limit, SWEEP_BUDGET)));
    return { records: recordsFromFlat(flat), cursor: next };
  }

  /** A project's records in the order and range of one of its indexes (indexed-records.lua). */
  private async indexed(index: string, order: 'asc' | 'desc', min: string, max: string, limit: string): Promise<ImageRecord[]> {
    return recordsFromFlat(await this.redis.gqeIndexedRecords(this.prefix, index, order, min, max, limit));
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
      const json = JSON.stringify({
        atMs: a.atMs,
        projectId: a.projectId,
        imageId: a.imageId,
        action: a.action,
        reason: a.reason,
        over: a.over,
        usage: a.usage,
        limits: a.limits,
      });
      args.push(String(a.atMs), a.imageId, a.action === 'would-delete' ? '1' : '0', json);
    }
    const kept = await this.redis.gqeRecordActions(...args);
    return actions.filter((_, i) => kept[i] === 1);
  }

  /** Oldest first: by `atMs`, then in the order recorded. */
  async actions(query: { projectId?: string; sinceMs?: number } = {}): Promise<ActionRecord[]> {
    const members = await this.redis.zrangebyscore(`${this.prefix}actions`, query.sinceMs ?? '-inf', '+inf');
    return members.map((m) => JSON.parse(m.slice(16)) as ActionRecord).filter((a) => query.projectId === undefined || a.projectId === query.projectId);
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
      this.prefix,
      projectId,
      String(nowMs),
      String(expiresAtMs),
      randomUUID(),
      bounds.countLimit === undefined ? '' : String(bounds.countLimit),
      bounds.rate ? String(bounds.rate.count) : '',
      String(bounds.rate?.recent ?? 0),
    );
    return { admitted: admitted === 1, count: Number(count), reserved: Number(reserved) };
  }

  async releaseReservations(creates: ReadonlyMap<string, number>, nowMs: number): Promise<number> {
    const pairs = [...creates].filter(([, n]) => n > 0).flatMap(([p, n]) => [p, String(n)]);
    if (pairs.length === 0) return 0;
    return Number(await this.redis.gqeReleaseReservations(this.prefix, String(nowMs), ...pairs));
  }

  async acquireLease(name: string, holder: string, ttlMs: number, nowMs: number): Promise<boolean> {
    const until = String(nowMs + ttlMs);
    // PX must be positive; a lease of no time is one that is over at once anyway.
    const px = Math.max(1, Math.ceil(ttlMs));
    // A free name in one step, no script; a held one goes to the script, which judges expiry by
    // the caller's clock as every store does.
    if ((await this.redis.set(`${this.prefix}lease:${name}`, `${until} ${holder}`, 'PX', px, 'NX')) === 'OK') return true;
    return (await this.redis.gqeAcquireLease(this.prefix, name, holder, until, String(nowMs), String(px))) === 1;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    await this.redis.gqeReleaseLease(this.prefix, name, holder);
  }

  async leaseUntil(name: string): Promise<number | undefined> {
    // "<until ms> <holder>", as acquireLease writes it.
    const value = await this.redis.get(`${this.prefix}lease:${name}`);
    return value === null ? undefined : Number(value.slice(0, value.indexOf(' ')));
  }

  async close(): Promise<void> {
    if (this.redis.status !== 'end') await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
