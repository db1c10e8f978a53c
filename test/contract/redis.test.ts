import type { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openStore } from '../../src/store/index.js';
import { RedisStore } from '../../src/store/redis.js';
import { ev, MiB } from '../support/events.js';
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
