import fc from 'fast-check';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/index.js';
import type { ImageRecord } from '../../src/ledger/record.js';
import type { ImageEvent } from '../../src/notification/parse.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { RedisStore } from '../../src/store/redis.js';
import { ev, imageHistory, MiB } from '../support/events.js';
import { connectRedisForTests, holdService, REDIS_URL, type TestRedis } from '../support/services.js';
import { describeLedgerStore } from './ledger-store.contract.js';
import { describeAdmissionStore, itAdmitsExactlyAcrossGates } from './admission.contract.js';
import { itAppliesConcurrentWritersExactlyOnce, itGrantsOneLeaseAcrossConnections } from './shared-ledger.contract.js';

/**
 * Against a real Redis (TEST_REDIS_URL): every store a test opens gets a key prefix of its own,
 * deleted at the end. The file holds the service lock, so the integration suite never stops
 * Redis under it (test/support/services.ts).
 */
const SERVER_URL = REDIS_URL;
const server = new URL(SERVER_URL);

let redis: TestRedis | undefined;
let release: (() => void) | undefined;
let admin: Redis;
const freshPrefix = () => redis!.freshPrefix();

// Kept and thrown by every test, so that each one fails (vitest would mark them skipped if
// beforeAll threw).
let unreachable: Error | undefined;
beforeAll(async () => {
  try {
    release = await holdService('redis');
    redis = await connectRedisForTests();
    admin = redis.admin;
  } catch (err) {
    unreachable = err as Error;
  }
}, 330_000);
beforeEach(() => {
  if (unreachable) throw unreachable;
});

afterAll(async () => {
  try {
    await redis?.cleanUp();
  } finally {
    release?.();
  }
});

describeLedgerStore('redis', async () => RedisStore.open(SERVER_URL, { keyPrefix: freshPrefix() }));
describeAdmissionStore('redis', async () => RedisStore.open(SERVER_URL, { keyPrefix: freshPrefix() }));

describe('redis: a database shared by several consumers', () => {
  it('keeps the ledger and the processed ids across a restart', async () => {
    const keyPrefix = freshPrefix();
    const a = ev({ imageId: 'a', status: 'active', size: 2 * MiB });
    const first = await RedisStore.open(SERVER_URL, { keyPrefix });
    await first.applyEvents([a], 1);
    await first.close();
    const again = await RedisStore.open(SERVER_URL, { keyPrefix });
    expect((await again.applyEvents([a], 2)).outcomes).toEqual(['duplicate']);
    expect((await again.usage('p1')).image_size_total).toBe(2);
    expect(await again.images('p1')).toEqual([expect.objectContaining({ imageId: 'a', size: 2 * MiB, timestamp: a.timestamp })]);
    await again.close();
  });

  it('commits a batch whole or not at all', async () => {
    for (const planted of ['image:boom', 'totals:p2', 'removable:p2']) {
      const keyPrefix = freshPrefix();
      const store = await RedisStore.open(SERVER_URL, { keyPrefix });
      // A key of the wrong type fails the script: once while reading, twice just before writing.
      await admin.set(`${keyPrefix}${planted}`, 'not a hash');
      const ok = ev({ imageId: 'ok', status: 'active', size: MiB });
      const boom = ev({ imageId: 'boom', projectId: 'p2', status: 'active' });
      await expect(store.applyEvents([ok, boom], 1)).rejects.toThrow(/WRONGTYPE/);
      expect(await store.projects()).toEqual([]);
      expect(await store.usage('p1')).toMatchObject({ image_count_total: 0 });
      // Only the planted key, and the layout's version written at open.
      expect((await admin.keys(`${keyPrefix}*`)).sort()).toEqual([`${keyPrefix}${planted}`, `${keyPrefix}schema`].sort());
      // Nothing of the failed batch was recorded as processed, so its redelivery is applied.
      expect((await store.applyEvents([ok], 2)).outcomes).toEqual(['applied']);
      await store.close();
    }
  });

  itAppliesConcurrentWritersExactlyOnce('connections', async () => {
    const keyPrefix = freshPrefix();
    return [await RedisStore.open(SERVER_URL, { keyPrefix }), await RedisStore.open(SERVER_URL, { keyPrefix })];
  });

  itAdmitsExactlyAcrossGates('connections', async () => {
    const keyPrefix = freshPrefix();
    return [await RedisStore.open(SERVER_URL, { keyPrefix }), await RedisStore.open(SERVER_URL, { keyPrefix })];
  });

  itGrantsOneLeaseAcrossConnections('connections', async () => {
    const keyPrefix = freshPrefix();
    return [await RedisStore.open(SERVER_URL, { keyPrefix }), await RedisStore.open(SERVER_URL, { keyPrefix })];
  });

  it('forgets a would-delete with its audit record, so a later dry run records it again', async () => {
    const store = await RedisStore.open(SERVER_URL, { keyPrefix: freshPrefix() });
    const base = {
      projectId: 'p1',
      imageId: 'a',
      action: 'would-delete' as const,
      reason: 'r',
      over: [],
      usage: { image_count_total: 1, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 },
      limits: {},
    };
    expect(
      await store.recordActions([
        { ...base, atMs: 10 },
        { ...base, atMs: 11 },
      ]),
    ).toHaveLength(1);
    expect(await store.forgetActionsBefore(20)).toBe(1);
    expect(await store.recordActions([{ ...base, atMs: 30 }])).toHaveLength(1);
    await store.close();
  });

  it('is what STORE_URL=redis:// opens; the password is never shown', async () => {
    const keyPrefix = freshPrefix();
    const store = await openStore(SERVER_URL, { redisKeyPrefix: keyPrefix });
    expect(store.description).toBe(`redis://${server.host}${server.pathname.length > 1 ? server.pathname : '/0'} keys ${keyPrefix}*`);
    expect((await store.applyEvents([ev({ imageId: 'a' })], 1)).outcomes).toEqual(['applied']);
    expect(await admin.exists(`${keyPrefix}image:a`)).toBe(1);
    await store.close();
    const err = await openStore('redis://:s3cret@127.0.0.1:1/0').catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/^STORE_URL: cannot connect to Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:1\/0 keys gqe:\*/);
    expect((err as Error).message).not.toContain('s3cret');
  });
});

/** What the previous version (schema 1: no indexes, `projects` and `images-of:<p>` sets) left for these images. */
async function writeSchema1Ledger(prefix: string, events: readonly ImageEvent[]): Promise<void> {
  const p = admin.pipeline();
  const count = new Map<string, number>();
  for (const e of events) {
    p.hset(`${prefix}image:${e.imageId}`, {
      project: e.projectId,
      status: e.status,
      size: e.size === null ? '' : String(e.size),
      created: String(e.createdAt),
      updated: String(e.updatedAt),
      ts: String(e.timestamp),
      msg: e.messageId,
      importing: e.importing,
      protected: e.protected ? '1' : '0',
      deleted: e.deleted ? '1' : '0',
    });
    p.sadd(`${prefix}images-of:${e.projectId}`, e.imageId);
    const live = !e.deleted && !['killed', 'deleted', 'pending_delete'].includes(e.status);
    count.set(e.projectId, (count.get(e.projectId) ?? 0) + (live ? 1 : 0));
    if (!live) p.zadd(`${prefix}dead`, e.updatedAt, e.imageId);
  }
  for (const [project, n] of count) {
    if (n > 0) p.hset(`${prefix}totals:${project}`, { count: n, uploading: 0, size: 0, stage: 0 }).sadd(`${prefix}projects`, project);
  }
  await p.exec();
}

/** Every command the server runs on keys under `prefix` (from scripts too) while `work` runs. */
async function commandsOn(prefix: string, work: () => Promise<unknown>): Promise<string[][]> {
  const monitor = await admin.monitor();
  const seen: string[][] = [];
  const sentinel = `${prefix}monitor-sentinel`;
  let sentinelSeen: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    sentinelSeen = resolve;
  });
  monitor.on('monitor', (_time: string, args: string[]) => {
    if (args.includes(sentinel)) sentinelSeen();
    else if (args.some((a) => a.startsWith(prefix))) seen.push(args);
  });
  try {
    await work();
    // MONITOR's stream lags the replies: everything before this command has been seen once it is.
    await admin.exists(sentinel);
    await done;
  } finally {
    monitor.disconnect();
  }
  return seen;
}

const count = (commands: string[][], name: string) => commands.filter((c) => c[0]?.toUpperCase() === name).length;

describe('redis: the indexes', () => {
  it('indexes a ledger the previous version wrote, once, at open, in slices', async () => {
    const keyPrefix = freshPrefix();
    // 2,500 records of one busy project: more than one SCAN slice. Every 500th is queued, every
    // 10th a tombstone; 'p-gone' holds only a tombstone, so it was in `dead` but not in `projects`.
    const busy = Array.from({ length: 2_500 }, (_, n) =>
      ev({
        imageId: `img-${String(n).padStart(4, '0')}`,
        projectId: 'p-busy',
        status: n % 500 === 7 ? 'queued' : n % 10 === 0 ? 'deleted' : 'active',
        deleted: n % 10 === 0,
        createdAt: 1_000 + n,
      }),
    );
    const gone = ev({ imageId: 'gone', projectId: 'p-gone', status: 'deleted', deleted: true, createdAt: 50 });
    await writeSchema1Ledger(keyPrefix, [...busy, gone]);

    const store = await RedisStore.open(SERVER_URL, { keyPrefix });
    expect(await admin.get(`${keyPrefix}schema`)).toBe('2');
    expect(await admin.exists(`${keyPrefix}projects`, `${keyPrefix}images-of:p-busy`, `${keyPrefix}images-of:p-gone`)).toBe(0);
    const queued = busy.filter((e) => e.status === 'queued').map((e) => e.imageId);
    expect((await store.removableImages('p-busy', 3)).map((r) => r.imageId)).toEqual(queued.reverse().slice(0, 3));
    expect((await store.imagesCreatedSince('p-busy', 3_490)).map((r) => r.imageId)).toEqual(busy.slice(2_490).map((e) => e.imageId));
    expect((await store.imagesCreatedSince('p-gone', 0)).map((r) => r.imageId)).toEqual(['gone']);
    expect(await store.images('p-busy')).toHaveLength(2_500);
    expect(await store.projects({ after: '', limit: 10 })).toEqual(['p-busy']);
    let swept = 0;
    for (let page = await store.unmarkedLive('pass', '', 1_000); ; page = await store.unmarkedLive('pass', page.cursor, 1_000)) {
      swept += page.records.length;
      if (page.cursor === '') break;
    }
    expect(swept).toBe(busy.filter((e) => !e.deleted).length);

    // Written by this version from here on: the indexes follow, and a second open leaves them be.
    await store.applyEvents([ev({ imageId: queued[0]!, projectId: 'p-busy', status: 'active', createdAt: 1_000, updatedAt: 9_000 })], 2);
    expect(await store.removableImages('p-busy', 10)).toHaveLength(queued.length - 1);
    await store.close();
    const again = await RedisStore.open(SERVER_URL, { keyPrefix });
    expect(await again.removableImages('p-busy', 10)).toHaveLength(queued.length - 1);
    await again.close();
  });

  it('keeps its indexes equal to the records through any history: owner changes, tombstones, revivals, forgetting', async () => {
    const histories = imageHistory({
      images: 8,
      projects: ['p1', 'p2', 'p3'],
      statuses: ['queued', 'saving', 'active', 'killed', 'pending_delete'],
      maxSizeBytes: MiB,
      versions: 21,
      maxMicros: 999_999,
      importing: ['', 'file'],
      deleteOneIn: 3,
      minLength: 1,
      maxLength: 40,
      createdFrom: 0,
      createdEvery: 3,
      updatedFrom: 100,
    });
    // What each indexed read gives, ids only, in the order the port promises (or sorted where it promises none).
    const reads = async (store: LedgerStore) => ({
      projects: await store.projects({ after: '', limit: 100 }),
      removable: await Promise.all(['p1', 'p2', 'p3'].map(async (p) => (await store.removableImages(p, 3)).map((r) => r.imageId))),
      window: await Promise.all(['p1', 'p2', 'p3'].map(async (p) => (await store.imagesCreatedSince(p, 9)).map((r) => r.imageId).sort())),
      unmarked: (await store.unmarkedLive('pass', '', 100)).records.map((r) => r.imageId).sort(),
    });
    await fc.assert(
      fc.asyncProperty(histories, fc.integer({ min: 1, max: 7 }), async (events, size) => {
        const memory = new MemoryStore();
        const store = await RedisStore.open(SERVER_URL, { keyPrefix: freshPrefix() });
        for (let i = 0; i < events.length; i += size) {
          await memory.applyEvents(events.slice(i, i + size), 1);
          await store.applyEvents(events.slice(i, i + size), 1);
        }
        await memory.markListed(['img-0', 'img-1'], 'pass');
        await store.markListed(['img-0', 'img-1'], 'pass');
        expect(await reads(store)).toEqual(await reads(memory));
        // Forgetting the dead records updated before 110 s drops them from every index.
        expect(await store.forgetDeadImagesBefore(110_000)).toBe(await memory.forgetDeadImagesBefore(110_000));
        expect(await reads(store)).toEqual(await reads(memory));
        await store.close();
      }),
      { numRuns: 60 },
    );
  }, 120_000);

  it('refuses a ledger of a newer layout instead of misreading it', async () => {
    const keyPrefix = freshPrefix();
    await admin.set(`${keyPrefix}schema`, '3');
    await expect(RedisStore.open(SERVER_URL, { keyPrefix })).rejects.toThrow(/schema: the ledger has layout 3, newer than this version's 2/);
  });

  it('reads a project of 100k records for its 5 queued images, its rate window and a sweep page, not its history', async () => {
    const keyPrefix = freshPrefix();
    const store = await RedisStore.open(SERVER_URL, { keyPrefix });
    // 100,000 records: a tenth of them tombstones, 5 queued among the oldest, the rest active.
    const N = 100_000;
    const queuedAt = new Set([3, 10, 500, 7_000, 20_000]);
    for (let from = 0; from < N; from += 5_000) {
      const batch = Array.from({ length: 5_000 }, (_, k) => {
        const n = from + k;
        const status = queuedAt.has(n) ? 'queued' : n % 10 === 0 ? 'deleted' : 'active';
        return ev({
          imageId: `img-${String(n).padStart(6, '0')}`,
          projectId: 'busy',
          status,
          deleted: status === 'deleted',
          size: status === 'active' ? MiB : null,
          createdAt: 1_000_000 + n,
        });
      });
      await store.applyEvents(batch, 1, { dedupe: false });
    }

    let removable: ImageRecord[] = [];
    const forRemovable = await commandsOn(keyPrefix, async () => {
      removable = await store.removableImages('busy', 1_000);
    });
    expect(removable.map((r) => r.imageId)).toEqual(['img-020000', 'img-007000', 'img-000500', 'img-000010', 'img-000003']);
    // One hash read per queued image: before the index, one per record (100,000).
    expect(count(forRemovable, 'HGETALL')).toBe(5);

    let window: ImageRecord[] = [];
    const forWindow = await commandsOn(keyPrefix, async () => {
      window = await store.imagesCreatedSince('busy', 1_000_000 + N - 50);
    });
    expect(window).toHaveLength(50);
    expect(count(forWindow, 'HGETALL')).toBe(50);

    // Every live record marked by the pass: a sweep page looks at a bounded slice of ids, finds
    // nothing, and says where to go on.
    const live = (await store.images('busy')).filter((r) => !r.deleted).map((r) => r.imageId);
    for (let i = 0; i < live.length; i += 10_000) await store.markListed(live.slice(i, i + 10_000), 'pass-1');
    let page = { records: [] as ImageRecord[], cursor: '' };
    const forSweep = await commandsOn(keyPrefix, async () => {
      page = await store.unmarkedLive('pass-1', '', 100);
    });
    expect(page.records).toEqual([]);
    expect(page.cursor).not.toBe('');
    expect(count(forSweep, 'HMGET')).toBeLessThanOrEqual(2_000);
    expect(count(forSweep, 'HGETALL')).toBe(0);
    await store.close();
  }, 120_000);
});
