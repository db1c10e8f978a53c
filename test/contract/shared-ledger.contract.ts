import fc from 'fast-check';
import { expect, it } from 'vitest';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { MiB, imageHistory } from '../support/events.js';

/** Every project's records and usage: what two ledgers must agree on. */
export async function snapshot(store: LedgerStore) {
  const out: Record<string, unknown> = {};
  for (const p of await store.projects()) {
    const images = (await store.images(p)).sort((a, b) => (a.imageId < b.imageId ? -1 : 1));
    out[p] = { images, usage: await store.usage(p) };
  }
  return out;
}

/** A history with owner changes, tombstones and many versions of each image. */
const history = imageHistory({
  images: 10,
  projects: ['p1', 'p2', 'p3'],
  statuses: ['queued', 'saving', 'uploading', 'importing', 'active', 'killed'],
  maxSizeBytes: 8 * MiB,
  versions: 6,
  maxMicros: 3,
  importing: ['', 'file'],
  deleteOneIn: 8,
  minLength: 40,
  maxLength: 120,
  createdFrom: 1_700_000_000,
  createdEvery: 1,
  updatedFrom: 1_800_000_000,
});

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

export function batches<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/**
 * The shared stores' promise: 4 consumers on 2 connections (pools, clients) applying the same
 * messages concurrently, each in its own order and batching, apply each message exactly once and
 * end with the ledger of one in-memory run. `openShared` gives two stores on one fresh namespace.
 */
export function itAppliesConcurrentWritersExactlyOnce(what: string, openShared: () => Promise<[LedgerStore, LedgerStore]>): void {
  it(`applies the same messages from 4 consumers on 2 ${what} exactly once`, async () => {
    await fc.assert(
      fc.asyncProperty(deliveries, async ([events, consumers]) => {
        const stores = await openShared();
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
        expect(await snapshot(stores[0])).toEqual(await snapshot(expected));
        await Promise.all(stores.map((s) => s.close()));
      }),
      { numRuns: 8 },
    );
  });
}

/**
 * Replicas sharing a ledger decide a project one at a time: 20 holders on 2 connections asking
 * for one lease at once, exactly one gets it; once it is released, exactly one of them again.
 */
export function itGrantsOneLeaseAcrossConnections(what: string, openShared: () => Promise<[LedgerStore, LedgerStore]>): void {
  it(`grants a lease to exactly one of 20 holders on 2 ${what}`, async () => {
    const stores = await openShared();
    try {
      const now = Date.UTC(2026, 11, 1);
      const ask = (at: number) => Promise.all(Array.from({ length: 20 }, (_, i) => stores[i % 2]!.acquireLease('project:p1', `replica-${i}`, 30_000, at)));
      const first = await ask(now);
      expect(first.filter(Boolean)).toHaveLength(1);
      await stores[1]!.releaseLease('project:p1', `replica-${first.indexOf(true)}`);
      // The winner is among them again: it may extend, the others may take the freed lease.
      expect((await ask(now + 1)).filter(Boolean)).toHaveLength(1);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });
}
