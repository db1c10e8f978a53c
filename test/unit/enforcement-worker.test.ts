import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { pipelineOf } from '../../src/composition-root.js';
import { ProjectBusyError } from '../../src/errors.js';
import type { GlanceImage } from '../../src/ledger/glance-image.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { EnforcementWorker } from '../../src/pipeline/enforcement-worker.js';
import type { DeleteOutcome, EnforcementReport, ImageService, ListedPage, UnprotectOutcome } from '../../src/pipeline/index.js';
import { MemoryStore } from '../../src/store/memory.js';
import { ev } from '../support/events.js';

const silent = createLogger('silent');
const reportOf = (projectId: string) => ({ projectId }) as EnforcementReport;

describe('the enforcement worker', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('decides up to ENFORCE_PROJECTS projects at once, never one project twice at once, and each once per backlog', async () => {
    let running = 0;
    let most = 0;
    const inHand = new Set<string>();
    const decided: string[] = [];
    const pipeline = {
      enforce: async (projectId: string) => {
        expect(inHand.has(projectId)).toBe(false);
        inHand.add(projectId);
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 100));
        running--;
        inHand.delete(projectId);
        decided.push(projectId);
        return reportOf(projectId);
      },
    };
    const worker = new EnforcementWorker(pipeline, silent, new Metrics(), undefined, { projectsAtOnce: 3 });
    const projects = Array.from({ length: 10 }, (_, i) => `p${i}`);
    worker.add(projects);
    // The first three are in hand at once. A flood of messages for two of them (p0, p1) and for
    // a pending one (p9): coalesced into one more decision each for p0 and p1, none for p9.
    for (let i = 0; i < 50; i++) worker.add(['p0', 'p1', 'p9']);
    await vi.advanceTimersByTimeAsync(50);
    expect(running).toBe(3);
    expect([...inHand].sort()).toEqual(['p0', 'p1', 'p2']);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(worker.idle).toBe(true);
    expect(most).toBe(3);
    const times = (p: string) => decided.filter((d) => d === p).length;
    expect(projects.map(times)).toEqual([2, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
  });

  it('defers a busy project for its retryAfterMs, without counting it a failure, and takes it once then', async () => {
    const attempts: number[] = [];
    let busyFor = 5;
    const pipeline = {
      enforce: async (projectId: string) => {
        attempts.push(Date.now());
        if (busyFor-- > 0) throw new ProjectBusyError(projectId, 1_000);
        return reportOf(projectId);
      },
    };
    const metrics = new Metrics();
    const reports: string[] = [];
    // One failure would be enough to give up: busy five times in a row must not be one.
    const worker = new EnforcementWorker(pipeline, silent, metrics, (r) => void reports.push(r.projectId), { maxAttempts: 1 });
    const start = Date.now();
    worker.add(['p1']);
    await vi.advanceTimersByTimeAsync(10);
    expect(worker.deferred).toBe(1);
    // Messages for the deferred project meanwhile: it is not taken before its time.
    for (let i = 0; i < 100; i++) worker.add(['p1']);
    await vi.advanceTimersByTimeAsync(500);
    expect(attempts).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(attempts.map((t) => t - start)).toEqual([0, 1_000, 2_000, 3_000, 4_000, 5_000]);
    expect(reports).toEqual(['p1']);
    expect((await metrics.enforcementAbandoned.get()).values[0]?.value ?? 0).toBe(0);
    expect(worker.idle && worker.deferred === 0).toBe(true);
  });

  it('leaves a project that keeps failing to the reconcile after ENFORCE_MAX_ATTEMPTS, reports it, and goes on with the others', async () => {
    const tried: string[] = [];
    const pipeline = {
      enforce: async (projectId: string) => {
        tried.push(projectId);
        if (projectId === 'broken') throw new Error('Glance at http://glance.test:9292 did not answer (project broken)');
        return reportOf(projectId);
      },
    };
    const metrics = new Metrics();
    const lines: { level: number; msg: string; projectId?: string }[] = [];
    const log = createLogger('warn', new Writable({ write: (chunk, _enc, done) => done(void lines.push(JSON.parse(String(chunk)))) }));
    const worker = new EnforcementWorker(pipeline, log, metrics, undefined, { maxAttempts: 4, projectsAtOnce: 1 });
    worker.add(['broken', 'fine-1']);
    await vi.advanceTimersByTimeAsync(10);
    // Broken's backoff does not hold the slot: the next project is decided meanwhile.
    expect(tried).toEqual(['broken', 'fine-1']);
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(tried.filter((p) => p === 'broken')).toHaveLength(4);
    expect((await metrics.enforcementAbandoned.get()).values[0]?.value).toBe(1);
    expect(lines.filter((l) => l.level === 50)).toEqual([
      expect.objectContaining({ projectId: 'broken', msg: expect.stringMatching(/left to the reconcile/) }),
    ]);
    expect(worker.deferred).toBe(0);
    // Given up, not forgotten forever: a new message for it starts a fresh count.
    worker.add(['broken']);
    await vi.advanceTimersByTimeAsync(10);
    expect(tried.filter((p) => p === 'broken')).toHaveLength(5);
    await worker.stop(0);
  });
});

/**
 * A Glance whose project holds `base` images, generated as the listing walks them (never held),
 * plus the creates of the burst, kept until deleted. Counts its listings, with when they started.
 */
class LargeProjectGlance implements ImageService {
  readonly listings: number[] = [];
  readonly created = new Map<string, GlanceImage>();
  deletes = 0;

  constructor(
    private readonly owner: string,
    private readonly base: number,
  ) {}

  private baseImage(i: number): GlanceImage {
    const at = new Date(Date.UTC(2025, 0, 1) + i * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
    return {
      id: `base-${String(i).padStart(6, '0')}`,
      owner: this.owner,
      status: 'active',
      protected: false,
      size: 1,
      created_at: at,
      updated_at: at,
      visibility: 'private',
    };
  }

  async getImage(id: string): Promise<GlanceImage | null> {
    return this.created.get(id) ?? null;
  }

  async deleteImage(id: string): Promise<DeleteOutcome> {
    if (!this.created.delete(id)) return { result: 'gone' };
    this.deletes++;
    return { result: 'deleted' };
  }

  async unprotectImage(): Promise<UnprotectOutcome> {
    return { result: 'unprotected' };
  }

  listPages(): AsyncIterable<ListedPage> {
    throw new Error('this test lists one project, never the whole cloud');
  }

  async *listImages(): AsyncIterable<GlanceImage> {
    this.listings.push(Date.now());
    for (let i = 0; i < this.base; i++) yield this.baseImage(i);
    yield* [...this.created.values()];
  }
}

describe('a project of 100k images under a burst of notifications', () => {
  it('costs at most one listing per ENFORCE_INTERVAL, across the whole burst, and ends at its limit', async () => {
    const P = 'big-project';
    const BASE = 100_000;
    const INTERVAL_MS = 1_000;
    const glance = new LargeProjectGlance(P, BASE);
    const store = new MemoryStore();
    // The ledger already knows the 100k images (a reconcile ran), and the project is at its limit.
    const base: ReturnType<typeof ev>[] = [];
    for await (const image of glance.listImages())
      base.push(ev({ imageId: image.id, projectId: P, status: 'active', size: 1, createdAt: Date.parse(image.created_at) / 1000 }));
    glance.listings.length = 0;
    await store.applyEvents(base, Date.now(), { dedupe: false });
    const pipeline = pipelineOf({
      store,
      limits: { limitsFor: async () => ({ image_count_total: BASE }) },
      images: glance,
      enforceIntervalMs: INTERVAL_MS,
    });
    const worker = new EnforcementWorker(pipeline, silent, new Metrics(), undefined, { projectsAtOnce: 4 });

    // 1,000 creates, each in Glance and then on the bus, in batches of 10 over about 3 s.
    const started = Date.now();
    for (let batch = 0; batch < 100; batch++) {
      const events = Array.from({ length: 10 }, (_, k) => {
        const id = `new-${String(batch * 10 + k).padStart(4, '0')}`;
        const now = Math.floor(Date.now() / 1000);
        const at = new Date(now * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
        glance.created.set(id, { id, owner: P, status: 'queued', protected: false, size: null, created_at: at, updated_at: at, visibility: 'private' });
        return ev({ imageId: id, projectId: P, status: 'queued', createdAt: now, updatedAt: now, eventType: 'image.create' });
      });
      worker.add((await store.applyEvents(events, Date.now())).projects);
      await new Promise((r) => setTimeout(r, 30));
    }
    // The last ones are decided once the interval after the last listing is over.
    while (!(worker.idle && worker.deferred === 0)) await new Promise((r) => setTimeout(r, 50));
    const elapsed = Date.now() - started;
    await worker.stop();

    expect(glance.listings.length).toBeGreaterThanOrEqual(2);
    expect(glance.listings.length).toBeLessThanOrEqual(Math.ceil(elapsed / INTERVAL_MS) + 1);
    // The listings of the project start at least an interval apart: never two within one.
    const gaps = glance.listings.slice(1).map((t, i) => t - glance.listings[i]!);
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(INTERVAL_MS - 5);
    // Coalesced, not dropped: every create past the limit was deleted, once.
    expect(glance.created.size).toBe(0);
    expect(glance.deletes).toBe(1_000);
    expect((await store.actions({ projectId: P })).filter((a) => a.action === 'deleted')).toHaveLength(1_000);
    console.log(`burst: 1000 notifications over ${elapsed} ms, ${glance.listings.length} listings of ${BASE} images, gaps ${gaps.join(',')} ms`);
  }, 120_000);
});
