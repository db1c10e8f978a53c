import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { usageOf } from '../../src/ledger/usage.js';
import type { ImageEvent } from '../../src/notification/parse.js';
import { decide } from '../../src/quota/decide.js';
import type { ProjectLimits } from '../../src/quota/limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { LedgerStore } from '../../src/store/port.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { RedisStore } from '../../src/store/redis.js';
import { imageHistory } from '../support/events.js';
import { REDIS_URL, connectRedisForTests, freshPostgresDatabase, type TestDatabase, type TestRedis } from '../support/services.js';

const STATUSES = ['queued', 'saving', 'uploading', 'importing', 'active', 'deactivated', 'killed', 'pending_delete'];

/** A valid history: unique message ids, each image with one created_at, any statuses and times. */
const history = imageHistory({
  images: 8,
  projects: ['p1', 'p2'],
  statuses: STATUSES,
  maxSizeBytes: 3 * 1024 * 1024,
  versions: 21,
  maxMicros: 999_999,
  importing: ['', 'file', 'a,b'],
  deleteOneIn: 2,
  minLength: 1,
  maxLength: 40,
  createdFrom: 0,
  createdEvery: 3,
  updatedFrom: 100,
});

/** The same messages in any order, some of them delivered again. */
const reordered = history.chain((events) =>
  fc.tuple(
    fc.constant(events),
    fc.shuffledSubarray(events, { minLength: events.length, maxLength: events.length }),
    fc.array(fc.integer({ min: 0, max: events.length - 1 }), { maxLength: 10 }),
    fc.integer({ min: 1, max: 7 }),
  ),
);

const LIMITS: ProjectLimits = { image_count_total: 2, image_size_total: 1, image_create_rate: { count: 2, windowSeconds: 5 } };

async function outcome(store: LedgerStore, batches: ImageEvent[][]) {
  for (const b of batches) await store.applyEvents(b, 1);
  const out: Record<string, unknown> = {};
  for (const p of await store.projects()) {
    const images = await store.images(p);
    const usage = await store.usage(p);
    expect(usage).toEqual(usageOf(images));
    out[p] = { usage, decision: decide(images, usage, LIMITS, { exempt: false, nowSeconds: 10 }) };
  }
  await store.close();
  return out;
}

function split<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

describe('order and duplicates do not matter', () => {
  it('gives the same usage and removal list for any permutation and duplication (memory)', async () => {
    await fc.assert(
      fc.asyncProperty(reordered, async ([events, shuffled, dupes, batch]) => {
        const again = [...shuffled];
        for (const d of dupes) again.splice((d * 7) % (again.length + 1), 0, events[d]!);
        const expected = await outcome(new MemoryStore(), [events]);
        expect(await outcome(new MemoryStore(), split(again, batch))).toEqual(expected);
      }),
      { numRuns: 300 },
    );
  });

  it('gives the same result in SQLite as in memory', async () => {
    await fc.assert(
      fc.asyncProperty(reordered, async ([events, shuffled, , batch]) => {
        const expected = await outcome(new MemoryStore(), [events]);
        expect(await outcome(SqliteStore.open(':memory:'), split(shuffled, batch))).toEqual(expected);
      }),
      { numRuns: 60 },
    );
  });
});

describe('order and duplicates do not matter in the shared stores', () => {
  // The servers of test/contract/{postgres,redis}.test.ts: a database of its own for this file
  // (a schema per run), and a key prefix per run; everything is dropped at the end.
  let db: TestDatabase | undefined;
  let redis: TestRedis | undefined;
  // A server that cannot be reached fails its test (thrown in beforeAll, vitest would skip it).
  let pgUnreachable: Error | undefined;
  let redisUnreachable: Error | undefined;
  beforeAll(async () => {
    db = await freshPostgresDatabase().catch((err: Error) => {
      pgUnreachable = err;
      return undefined;
    });
    redis = await connectRedisForTests().catch((err: Error) => {
      redisUnreachable = err;
      return undefined;
    });
  });

  afterAll(async () => {
    await db?.drop();
    await redis?.cleanUp();
  });

  it('gives the same result in PostgreSQL as in memory', async () => {
    if (pgUnreachable) throw pgUnreachable;
    await fc.assert(
      fc.asyncProperty(reordered, async ([events, shuffled, , batch]) => {
        const url = await db!.freshSchemaUrl();
        const expected = await outcome(new MemoryStore(), [events]);
        expect(await outcome(await PostgresStore.open(url), split(shuffled, batch))).toEqual(expected);
      }),
      { numRuns: 30 },
    );
  });

  it('gives the same result in Redis as in memory', async () => {
    if (redisUnreachable) throw redisUnreachable;
    await fc.assert(
      fc.asyncProperty(reordered, async ([events, shuffled, , batch]) => {
        const expected = await outcome(new MemoryStore(), [events]);
        const store = await RedisStore.open(REDIS_URL, { keyPrefix: redis!.freshPrefix() });
        expect(await outcome(store, split(shuffled, batch))).toEqual(expected);
      }),
      { numRuns: 100 },
    );
  });
});
