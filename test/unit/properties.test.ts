import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import pg from 'pg';
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

const STATUSES = ['queued', 'saving', 'uploading', 'importing', 'active', 'deactivated', 'killed', 'pending_delete'];

/** A valid history: unique message ids, each image with one created_at, any statuses and times. */
const history = fc
  .array(
    fc.record({
      image: fc.integer({ min: 0, max: 7 }),
      project: fc.constantFrom('p1', 'p2'),
      status: fc.constantFrom(...STATUSES),
      size: fc.option(fc.integer({ min: 0, max: 3 * 1024 * 1024 }), { nil: null }),
      updatedAt: fc.integer({ min: 0, max: 20 }),
      micros: fc.integer({ min: 0, max: 999_999 }),
      importing: fc.constantFrom('', 'file', 'a,b'),
      deleted: fc.boolean(),
    }),
    { minLength: 1, maxLength: 40 },
  )
  .map((items) =>
    items.map(
      (x, i): ImageEvent => ({
        messageId: `msg-${i}`,
        eventType: x.deleted ? 'image.delete' : 'image.update',
        projectId: x.project,
        imageId: `img-${x.image}`,
        status: x.deleted ? 'deleted' : x.status,
        size: x.size,
        createdAt: x.image * 3,
        updatedAt: 100 + x.updatedAt,
        timestamp: (100 + x.updatedAt) * 1_000_000 + x.micros,
        importing: x.importing,
        protected: false,
        deleted: x.deleted,
      }),
    ),
  );

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
  const PG_URL = process.env.TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379/0';
  const tag = randomBytes(4).toString('hex');
  const database = `gqe_test_${tag}`;
  const dbUrl = Object.assign(new URL(PG_URL), { pathname: `/${database}` });
  const redisRoot = `gqe-test:${tag}:`;
  let pgAdmin: pg.Client | undefined;
  let redisAdmin: Redis | undefined;
  let runs = 0;

  async function pgClient(url: string | URL): Promise<pg.Client> {
    const client = new pg.Client({ connectionString: String(url) });
    await client.connect().catch((err: Error) => {
      throw new Error(
        `PostgreSQL at ${new URL(PG_URL).host} is not reachable (${err.message}): start it with ` +
          '`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or set TEST_POSTGRES_URL',
      );
    });
    return client;
  }

  // A server that cannot be reached fails its test (thrown in beforeAll, vitest would skip it).
  let pgUnreachable: Error | undefined;
  let redisUnreachable: Error | undefined;
  beforeAll(async () => {
    try {
      const root = await pgClient(PG_URL);
      await root.query(`CREATE DATABASE ${database}`);
      await root.end();
      pgAdmin = await pgClient(dbUrl);
    } catch (err) {
      pgUnreachable = err as Error;
    }
    redisAdmin = new Redis(REDIS_URL, { lazyConnect: true, retryStrategy: () => null });
    let lastError: Error | undefined;
    redisAdmin.on('error', (err: Error) => {
    lastError = err;
  });
    await redisAdmin.connect().catch((err: Error) => {
      redisUnreachable = new Error(
        `Redis at ${new URL(REDIS_URL).host} is not reachable (${(lastError ?? err).message}): start it with ` +
          '`redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no`, or set TEST_REDIS_URL',
      );
    });
  });

  afterAll(async () => {
    if (pgAdmin) {
      await pgAdmin.end();
      const root = await pgClient(PG_URL);
      await root.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await root.end();
    }
    if (redisAdmin?.status === 'ready') {
      let cursor = '0';
      do {
        const [next, keys] = await redisAdmin.scan(cursor, 'MATCH', `${redisRoot}*`, 'COUNT', 1000);
        if (keys.length > 0) await redisAdmin.del(...keys);
        cursor = next;
      } while (cursor !== '0');
      await redisAdmin.quit();
    }
  });

  it('gives the same result in PostgreSQL as in memory', async () => {
    if (pgUnreachable) throw pgUnreachable;
    await fc.assert(
      fc.asyncProperty(reordered, async ([events, shuffled, , batch]) => {
        const schema = `run${++runs}`;
        await pgAdmin!.query(`CREATE SCHEMA ${schema}`);
        const url = new URL(dbUrl);
        url.searchParams.set('options', `-c search_path=${schema}`);
        const expected = await outcome(new MemoryStore(), [events]);
        expect(await outcome(await PostgresStore.open(String(url)), split(shuffled, batch))).toEqual(expected);
      }),
      { numRuns: 30 },
    );
  });

  it('gives the same result in Redis as in memory', async () => {
    if (redisUnreachable) throw redisUnreachable;
    await fc.assert(
      fc.asyncProperty(reordered, async ([events, shuffled, , batch]) => {
        const expected = await outcome(new MemoryStore(), [events]);
        const store = await RedisStore.open(REDIS_URL, { keyPrefix: `${redisRoot}${++runs}:` });
        expect(await outcome(store, split(shuffled, batch))).toEqual(expected);
      }),
      { numRuns: 100 },
    );
  });
});
