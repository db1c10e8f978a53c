import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { pipelineOf } from '../../src/composition-root.js';
import type { ImageRecord } from '../../src/ledger/record.js';
import type { ImageEvent } from '../../src/notification/parse.js';
import { decide } from '../../src/quota/decide.js';
import type { ProjectLimits } from '../../src/quota/limits.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import { ev } from '../support/events.js';

/** A MemoryStore that counts the records each read of the port hands out (not its reads of itself). */
class CountingStore extends MemoryStore {
  read = 0;
  private depth = 0;
  override async images(projectId: string): Promise<ImageRecord[]> {
    return this.counted(() => super.images(projectId));
  }
  override async removableImages(projectId: string, limit: number): Promise<ImageRecord[]> {
    return this.counted(() => super.removableImages(projectId, limit));
  }
  override async imagesCreatedSince(projectId: string, sinceSeconds: number): Promise<ImageRecord[]> {
    return this.counted(() => super.imagesCreatedSince(projectId, sinceSeconds));
  }
  private async counted(read: () => Promise<ImageRecord[]>): Promise<ImageRecord[]> {
    this.depth++;
    try {
      const records = await read();
      if (this.depth === 1) this.read += records.length;
      return records;
    } finally {
      this.depth--;
    }
  }
}

const STATUSES = ['queued', 'queued', 'saving', 'active', 'killed', 'deleted', 'pending_delete', 'importing'];

/** A project's history: images created over 0..60 s, in any state, some deleted, in one or more versions. */
const history = fc.array(
  fc.record({
    image: fc.integer({ min: 0, max: 30 }),
    createdAt: fc.integer({ min: 0, max: 60 }),
    status: fc.constantFrom(...STATUSES),
    deleted: fc.boolean(),
    updatedAt: fc.integer({ min: 100, max: 110 }),
  }),
  { maxLength: 60 },
);

const limitsArb: fc.Arbitrary<ProjectLimits> = fc.record(
  {
    image_count_total: fc.integer({ min: -1, max: 8 }),
    image_create_rate: fc.record({ count: fc.integer({ min: 0, max: 5 }), windowSeconds: fc.integer({ min: 1, max: 70 }) }),
  },
  { requiredKeys: [] },
);

describe("the rate rule reads its window, not the project's history", () => {
  it('decides on the windowed reads exactly as on every record of the project', async () => {
    // One ledger and one pipeline for every run (building a pipeline costs more than a run): each
    // run has a project of its own, its limits and its time.
    const store = new MemoryStore();
    let limits: ProjectLimits = {};
    let nowMs = 0;
    const pipeline = pipelineOf({ store, limits: { limitsFor: async () => limits }, clock: () => nowMs });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(history, limitsArb, fc.integer({ min: 0, max: 130 }), async (steps, runLimits, nowSeconds) => {
        const projectId = `p-${++run}`;
        limits = runLimits;
        // Within the second: the decision's time is whole seconds.
        nowMs = nowSeconds * 1000 + 999;
        const events: ImageEvent[] = steps.map((s) =>
          ev({
            imageId: `${projectId}-img-${s.image}`,
            projectId,
            createdAt: s.createdAt,
            status: s.deleted ? 'deleted' : s.status,
            deleted: s.deleted,
            updatedAt: s.updatedAt,
          }),
        );
        await store.applyEvents(events, 1);
        const report = await pipeline.evaluate(projectId);
        const onEveryRecord = decide(await store.images(projectId), await store.usage(projectId), limits, { exempt: false, nowSeconds });
        expect({ over: report.over, toDelete: report.toDelete }).toEqual(onEveryRecord);
      }),
      { numRuns: 500 },
    );
  });

  it('reads at most the window on each of 20 notifications to a project of 100k tombstones', async () => {
    const now = 1_800_000_000;
    const store = new CountingStore();
    // A year of churn: 100k images created and deleted long before the window.
    const churn = Array.from({ length: 100_000 }, (_, n) =>
      ev({ imageId: `old-${n}`, status: 'deleted', deleted: true, createdAt: now - 400_000 + n, updatedAt: now - 300_000 + n }),
    );
    await store.applyEvents(churn, 1, { overwrite: true });
    const limits: ProjectLimits = { image_count_total: 100, image_create_rate: { count: 5, windowSeconds: 60 } };
    let clock = now * 1000;
    const pipeline = pipelineOf({ store, limits: new StaticLimits(limits), clock: () => clock });

    const reads: number[] = [];
    let last = await pipeline.evaluate('p1');
    for (let n = 0; n < 20; n++) {
      clock += 1000;
      await store.applyEvents([ev({ imageId: `new-${String(n).padStart(2, '0')}`, createdAt: clock / 1000, updatedAt: clock / 1000 })], clock);
      store.read = 0;
      last = await pipeline.evaluate('p1');
      reads.push(store.read);
    }
    // Notification n finds the n + 1 images of the burst in its window, and reads nothing else.
    expect(reads).toEqual(Array.from({ length: 20 }, (_, n) => n + 1));
    // And the decision is the rate rule's: the 15 created past the first 5 of the window.
    expect(last.over).toEqual(['image_create_rate']);
    expect(last.toDelete).toEqual(Array.from({ length: 15 }, (_, n) => `new-${String(19 - n).padStart(2, '0')}`));
  });
});
