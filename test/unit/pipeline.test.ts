import { describe, expect, it } from 'vitest';
import { pipelineOf } from '../../src/composition-root.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import { captures } from '../support/fixtures.js';
import { MemoryGlance } from '../functions/support.js';

describe('the pipeline keeps its store bounded', () => {
  it('forgets processed ids and audit records past their retention, keeping the recent ones', async () => {
    // A clock after the captured bodies: the door refuses messages dated after it.
    let now = Date.UTC(2026, 11, 1);
    const store = new MemoryStore();
    const pipeline = pipelineOf({
      store,
      limits: new StaticLimits({}),
      clock: () => now,
      retention: { messagesMs: 5_000, actionsMs: 5_000, deadImagesMs: 5_000 },
    });
    const bodies = captures().map((c) => c.body);
    await pipeline.ingest(bodies.slice(0, 10));
    const base = { over: [], usage: { image_count_total: 0, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 }, limits: {} };
    await store.recordActions([{ ...base, atMs: now, projectId: 'p', imageId: 'old', action: 'skipped', reason: 'r' }]);
    now += 10_000;
    await pipeline.ingest(bodies.slice(10));
    await store.recordActions([{ ...base, atMs: now, projectId: 'p', imageId: 'new', action: 'skipped', reason: 'r' }]);

    const forgotten = await pipeline.prune();
    const firstTen = (await pipeline.ingest(bodies.slice(0, 10))).outcomes.filter((o) => o.result === 'applied').length;
    expect(forgotten.actions).toBe(1);
    expect(forgotten.messages).toBe(firstTen);
    expect(firstTen).toBeGreaterThan(0);
    expect((await store.actions()).map((a) => a.imageId)).toEqual(['new']);
    // Ids of the later batch are still remembered: their redelivery is a duplicate.
    expect((await pipeline.ingest(bodies.slice(10))).outcomes.some((o) => o.result === 'applied')).toBe(false);
  });
});

/** A MemoryStore that counts its `usage` reads; `usage` reads without counting. */
function countingUsageReads() {
  const store = new MemoryStore();
  const reads = { count: 0 };
  const usage = store.usage.bind(store);
  store.usage = (projectId: string) => {
    reads.count++;
    return usage(projectId);
  };
  return { store, reads, usage };
}

describe('the pipeline decides after a batch on the totals the batch committed', () => {
  it('reads no usage from the store for projects the batch changed, and reads it again once they are taken', async () => {
    const now = Date.UTC(2026, 11, 1);
    const { store, reads, usage } = countingUsageReads();
    const pipeline = pipelineOf({ store, limits: new StaticLimits({}), clock: () => now });
    const result = await pipeline.ingest(captures().map((c) => c.body));
    expect(result.projects.length).toBeGreaterThan(0);
    for (const p of result.projects) expect((await pipeline.evaluate(p)).usage).toEqual(await usage(p));
    expect(reads.count).toBe(0);
    // Taken once: the next decision reads the store.
    await pipeline.evaluate(result.projects[0]!);
    expect(reads.count).toBe(1);
  });

  it("reads the store after Glance's listing rewrote the project", async () => {
    const now = Date.UTC(2026, 11, 1);
    const { store, reads } = countingUsageReads();
    // Glance has none of the images the notifications told of: the listing tombstones them all.
    const pipeline = pipelineOf({ store, limits: new StaticLimits({}), images: new MemoryGlance(), clock: () => now });
    const { projects } = await pipeline.ingest(captures().map((c) => c.body));
    const p = projects[0]!;
    await pipeline.enforceOnGlance(p);
    const report = await pipeline.evaluate(p);
    expect(reads.count).toBe(1);
    expect(report.usage.image_count_total).toBe(0);
  });

  it('reads the store when the totals are more than a few seconds old', async () => {
    let now = Date.UTC(2026, 11, 1);
    const { store, reads } = countingUsageReads();
    const pipeline = pipelineOf({ store, limits: new StaticLimits({}), clock: () => now });
    const { projects } = await pipeline.ingest(captures().map((c) => c.body));
    now += 60_000;
    for (const p of projects) await pipeline.evaluate(p);
    expect(reads.count).toBe(projects.length);
  });
});

describe('a project decided a moment ago is looked at again when its interval ends', () => {
  const image = (id: string, n: number) => {
    const at = new Date(Date.UTC(2026, 10, 1) + n * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
    return { id, owner: 'p-flood', status: 'queued' as const, protected: false, size: null, created_at: at, updated_at: at, visibility: 'private' as const };
  };
  const busyAfter = async (deletionMs: number, askAtMs: number) => {
    let now = Date.UTC(2026, 11, 1);
    const start = now;
    const glance = new MemoryGlance().add(...Array.from({ length: 10 }, (_, n) => image(`i-${n}`, n)));
    // Glance takes its time over each DELETE, as under a flood of creates.
    glance.onGet = () => {
      now += deletionMs / 5;
    };
    const pipeline = pipelineOf({
      store: new MemoryStore(),
      limits: new StaticLimits({ image_count_total: 5 }),
      images: glance,
      clock: () => now,
      enforceIntervalMs: 5_000,
    });
    expect((await pipeline.enforceOnGlance('p-flood')).actions).toHaveLength(5);
    now = start + askAtMs;
    return pipeline.enforceOnGlance('p-flood').then(
      () => 'decided',
      (err: { code?: string; retryAfterMs?: number }) => (err.code === 'PROJECT_BUSY' ? err.retryAfterMs : err),
    );
  };

  it('when the interval ends, counted from the start of the last decision, not a whole interval later', async () => {
    // A quick decision: asked 1 s after it began, 4 s of the interval are left.
    expect(await busyAfter(0, 1_000)).toBe(4_000);
    // Five deletions took 4.5 s: asked at 4.6 s, 0.4 s are left (before: 5 s more, whatever was left).
    expect(await busyAfter(4_500, 4_600)).toBe(400);
    // Once the interval is over, it is decided again.
    expect(await busyAfter(4_500, 5_000)).toBe('decided');
  });
});
