import fc from 'fast-check';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ImageEvent } from '../../src/notification/parse.js';
import { openStore } from '../../src/store/index.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { RedisStore } from '../../src/store/redis.js';
import { ev, MiB } from '../support/events.js';
import { connectRedisForTests, holdService, REDIS_URL, type TestRedis } from '../support/services.js';
import { describeLedgerStore } from './ledger-store.contract.js';

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

async function snapshot(store: LedgerStore) {
  const out: Record<string, unknown> = {};
  for (const p of await store.projects()) {
    const images = (await store.images(p)).sort((a, b) => (a.imageId < b.imageId ? -1 : 1));
    out[p] = { images, usage: await store.usage(p) };
  }
  return out;
}

/** A history with owner changes, tombstones and many versions of each image. */
const history = fc
  .array(
    fc.record({
      image: fc.integer({ min: 0, max: 9 }),
      project: fc.constantFrom('p1', 'p2', 'p3'),
      status: fc.constantFrom('queued', 'saving', 'uploading', 'importing', 'active', 'killed'),
      size: fc.option(fc.integer({ min: 0, max: 8 * MiB }), { nil: null }),
      updatedAt: fc.integer({ min: 0, max: 5 }),
      micros: fc.integer({ min: 0, max: 3 }),
      importing: fc.constantFrom('', 'file'),
      deleted: fc.integer({ min: 0, max: 7 }).map((n) => n === 0),
    }),
    { minLength: 40, maxLength: 120 },
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
        createdAt: 1_700_000_000 + x.image,
        updatedAt: 1_800_000_000 + x.updatedAt,
        timestamp: (1_800_000_000 + x.updatedAt) * 1_000_000 + x.micros,
        importing: x.importing,
        protected: false,
        deleted: x.deleted,
      }),
    ),
  );

/** Four consumers, each with every message in its own order, some twice, in batches of its own size. */
const deliveries = history.chain((events) =>
  fc.tuple(
    fc.constant(events),
    fc.array(
      fc.tuple(
        fc.shuffledSubarray(events, { minLength: events.length, maxLength: events.length }),
        fc.array(fc.integer({ min: 0, max: events.length - 1 }), { maxLength: 10 }),
        fc.integer({ min: 1, max: 12 }),
      ),
      { minLength: 4, maxLength: 4 },
    ),
  ),
);

function batches<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

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
    for (const planted of ['image:boom', 'totals:p2']) {
      const keyPrefix = freshPrefix();
      const store = await RedisStore.open(SERVER_URL, { keyPrefix });
      // A key of the wrong type fails the script: once while reading, once just before writing.
      await admin.set(`${keyPrefix}${planted}`, 'not a hash');
      const ok = ev({ imageId: 'ok', status: 'active', size: MiB });
      const boom = ev({ imageId: 'boom', projectId: 'p2', status: 'active' });
      await expect(store.applyEvents([ok, boom], 1)).rejects.toThrow(/WRONGTYPE/);
      expect(await store.projects()).toEqual([]);
      expect(await store.usage('p1')).toMatchObject({ image_count_total: 0 });
      expect(await admin.keys(`${keyPrefix}*`)).toEqual([`${keyPrefix}${planted}`]);
      // Nothing of the failed batch was recorded as processed, so its redelivery is applied.
      expect((await store.applyEvents([ok], 2)).outcomes).toEqual(['applied']);
      await store.close();
    }
  });

  it('applies the same messages from 4 consumers on 2 connections exactly once', async () => {
    await fc.assert(
      fc.asyncProperty(deliveries, async ([events, consumers]) => {
        const keyPrefix = freshPrefix();
        const stores = [await RedisStore.open(SERVER_URL, { keyPrefix }), await RedisStore.open(SERVER_URL, { keyPrefix })];
        const expected = new MemoryStore();
        await expected.applyEvents(events, 1);
        const results = await Promise.all(
          consumers.map(async ([order, dupes, size], i) => {
            const stream = [...order];
            for (const d of dupes) stream.splice((d * 7) % (stream.length + 1), 0, events[d]!);
            let applied = 0;
            for (const batch of batches(stream, size)) {
              const r = await stores[i % 2]!.applyEvents(batch, 1);
              applied += r.outcomes.filter((o) => o === 'applied').length;
            }
            return applied;
          }),
        );
        // Each message was applied by exactly one consumer; the others saw a duplicate.
        expect(results.reduce((a, b) => a + b, 0)).toBe(events.length);
        expect(await snapshot(stores[0]!)).toEqual(await snapshot(expected));
        await Promise.all(stores.map((s) => s.close()));
      }),
      { numRuns: 8 },
    );
  });

  it('orders versions exactly: microseconds near 2^52 and message ids as JavaScript compares them', async () => {
    const store = await RedisStore.open(SERVER_URL, { keyPrefix: freshPrefix() });
    const t = 4_102_444_800;
    const events = [
      ev({ imageId: 'a', status: 'queued', updatedAt: t, timestamp: t * 1_000_000 + 1 }),
      ev({ imageId: 'a', status: 'active', size: MiB, updatedAt: t, timestamp: t * 1_000_000 }),
      // UTF-16: U+1F600 is the surrogate pair D83D DE00, below U+FFFF; in UTF-8 bytes it is above.
      ev({ imageId: 'b', status: 'queued', updatedAt: t, timestamp: t * 1_000_000, messageId: 'm-\u{1F600}' }),
      ev({ imageId: 'b', status: 'active', size: MiB, updatedAt: t, timestamp: t * 1_000_000, messageId: 'm-\uFFFF' }),
      ev({ imageId: 'c', status: 'saving', updatedAt: t, timestamp: t * 1_000_000, messageId: 'm-é' }),
      ev({ imageId: 'c', status: 'active', size: MiB, updatedAt: t, timestamp: t * 1_000_000, messageId: 'm-z' }),
    ];
    for (const order of [events, [...events].reverse()]) {
      const memory = new MemoryStore();
      await memory.applyEvents(order, 1);
      await store.applyEvents(order, 1, { dedupe: false });
      expect(await snapshot(store)).toEqual(await snapshot(memory));
    }
    expect((await store.images('p1')).map((r) => r.status)).toEqual(['queued', 'active', 'saving']);
    await store.close();
  });

  it('forgets a would-delete with its audit record, so a later dry run records it again', async () => {
    const store = await RedisStore.open(SERVER_URL, { keyPrefix: freshPrefix() });
    const base = { projectId: 'p1', imageId: 'a', action: 'would-delete' as const, reason: 'r', over: [], usage: { image_count_total: 1, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 }, limits: {} };
    expect(await store.recordActions([{ ...base, atMs: 10 }, { ...base, atMs: 11 }])).toHaveLength(1);
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
    expect((err as Error).message).toMatch(/^STORE_URL: cannot connect to Redis at redis:\/\/127\.0\.0\.1:1\/0 keys gqe:\*/);
    expect((err as Error).message).not.toContain('s3cret');
  });
});
