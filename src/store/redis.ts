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
import { isRemovable, newestFirst } from '../quota/decide.js';
import { LEDGER_SCRIPTS } from './redis/scripts.js';

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
 *   P lease:<name>         string "<until ms> <holder>", with a PX expiry: acquireLease's lease
 */

interface LedgerScripts {
  gqeReserveCreate(...args: string[]): Promise<[number, number, number]>;
  gqeReleaseReservations(...args: string[]): Promise<number>;
  gqeApply(...args: string[]): Promise<string[]>;
  gqeRecordActions(...args: string[]): Promise<number[]>;
  gqeImages(prefix: string, projectId: string): Promise<(string | string[])[]>;
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

/** The URL without its password, plus the key prefix: what to look at in redis-cli. */
function describeUrl(url: string, keyPrefix: string): string {
  const base = redactUrl(url).replace(/[?#][\s\S]*$/, '');
  return `${/^[a-z]+:\/\/[^/]*$/i.test(base) ? `${base}/0` : base} keys ${keyPrefix}*`;
}

export interface RedisStoreOptions {
  /** Every key starts with it, so several ledgers (or other applications) can share a database. */
  keyPrefix?: string;
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
    redis.defineCommand('gqeImages', { numberOfKeys: 0, lua: LEDGER_SCRIPTS.images, readOnly: true });
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
    return new RedisStore(redis, keyPrefix, description);
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

  async close(): Promise<void> {
    if (this.redis.status !== 'end') await this.redis.quit().catch(() => this.redis.disconnect());
  }
}
