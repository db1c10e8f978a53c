import { describe, expect, it } from 'vitest';
import type { Pipeline } from '../../src/pipeline/index.js';
import { EventShapeError } from '../../src/doors/lambda/events.js';
import { reconcileHandler } from '../../src/doors/lambda/reconcile.js';
import type { GlanceImage, ImageStatus } from '../../src/ledger/glance-image.js';
import type { ProjectLimits } from '../../src/quota/limits.js';
import type { LimitSource } from '../../src/quota/limits.js';
import { FAILED_IN_A_ROW, reconcile, RECONCILE_CURSOR, TIMEOUT_MARGIN_MS } from '../../src/doors/reconcile.js';
import { MemoryStore } from '../../src/store/memory.js';
import { ev } from '../support/events.js';
import { MemoryGlance, scheduledEvent, servicesOver, withOutage } from './support.js';
import { pipelineOf } from '../../src/composition-root.js';

/*
 * The scheduled reconcile: the CLI's reconcile (the one reconcile door), within a budget; a pass
 * that does not fit in one run resumes at the next one from the cursor in the store.
 */

/** p-c is over its limit of 1 with four queued images; the others are within theirs. */
const limits: LimitSource = { limitsFor: async (p: string): Promise<ProjectLimits> => (p === 'p-c' ? { image_count_total: 1 } : {}) };

function image(id: string, owner: string, status: ImageStatus = 'queued', second = 0): GlanceImage {
  const at = `2026-11-26T20:00:${String(second).padStart(2, '0')}Z`;
  return { id, owner, status, protected: false, size: status === 'active' ? 1024 : null, created_at: at, updated_at: at, visibility: 'private' };
}

/** Five projects in Glance, and one image the ledger knows that Glance no longer has. */
function cloud(): { glance: MemoryGlance; store: MemoryStore } {
  const glance = new MemoryGlance().add(
    image('a-1', 'p-a', 'active'),
    image('b-1', 'p-b'),
    image('b-2', 'p-b', 'active'),
    ...[1, 2, 3, 4].map((n) => image(`c-${n}`, 'p-c', 'queued', n)),
    image('d-1', 'p-d', 'active'),
    image('e-1', 'p-e'),
  );
  const store = new MemoryStore();
  return { glance, store };
}

/**
 * Every project's usage, decision and records, without the versions a reconcile stamps from the
 * wall clock (a tombstone's time): two runs a few milliseconds apart must agree on the rest.
 */
async function ledgerOf(pipeline: Pipeline) {
  const out: Record<string, unknown> = {};
  for (const p of await pipeline.ledger.projects()) {
    const { usage, over, toDelete } = await pipeline.evaluate(p);
    const records = (await pipeline.ledger.images(p))
      .map(({ imageId, projectId, status, size, createdAt, deleted, protected: isProtected }) => ({
        imageId,
        projectId,
        status,
        size,
        createdAt,
        deleted,
        isProtected,
      }))
      .sort((a, b) => (a.imageId < b.imageId ? -1 : 1));
    out[p] = { usage, over, toDelete, records };
  }
  return out;
}

async function seedVanished(store: MemoryStore): Promise<void> {
  await store.applyEvents([ev({ imageId: 'z-1', projectId: 'p-z', status: 'active', createdAt: 1_000 })], 1);
}

/** Each project's decision takes 100 ms of the test clock (the limits are read once per project). */
function timed(clock: { now: number }, source: LimitSource = limits): LimitSource {
  return {
    limitsFor: async (p) => {
      clock.now += 100;
      return source.limitsFor(p);
    },
  };
}

describe('the scheduled reconcile', () => {
  it('spreads a pass over runs within the budget, resuming after the last project finished, and ends like the CLI', async () => {
    const { glance, store } = cloud();
    await seedVanished(store);
    // The listing takes 100 ms of the clock, and so does each project's decision.
    const clock = { now: 0 };
    glance.onList = () => {
      clock.now += 100;
    };
    const services = servicesOver({ store, glance, limits: timed(clock), clock: () => clock.now });
    const budget = { budgetMs: 450, resume: true };

    const first = await reconcile(services.pipeline, budget);
    // p-c, over its limit, is acted on a fresh listing of its own: the slowest project so far.
    expect(first.projects.map((p) => p.projectId)).toEqual(['p-a', 'p-b', 'p-c']);
    expect(first).toMatchObject({ complete: false, remaining: 3, cursor: 'p-c' });
    expect(first.pruned).toBeUndefined();
    expect(await store.getState(RECONCILE_CURSOR)).toBe('p-c');
    expect(glance.deleted.sort()).toEqual(['c-2', 'c-3', 'c-4']);

    clock.now = 10_000;
    const second = await reconcile(services.pipeline, budget);
    expect(second.projects.map((p) => p.projectId)).toEqual(['p-d', 'p-e', 'p-z']);
    expect(second).toMatchObject({ complete: true, remaining: 0, cursor: '', corrected: { vanished: 1 }, failures: [] });
    // A complete pass prunes the store, whichever door ran it.
    expect(second.pruned).toEqual({ messages: expect.any(Number), actions: expect.any(Number), deadImages: expect.any(Number) });
    expect(await store.getState(RECONCILE_CURSOR)).toBe('');

    // A new pass starts from the first project again.
    clock.now = 20_000;
    const third = await reconcile(services.pipeline, budget);
    expect(third.projects[0]!.projectId).toBe('p-a');

    // The CLI's reconcile of the same cloud, in one go, into a fresh ledger: the same ledger.
    const cli = cloud();
    await seedVanished(cli.store);
    const oracle = pipelineOf({ store: cli.store, limits, images: cli.glance });
    const once = await reconcile(oracle);
    expect(once).toMatchObject({ complete: true, cursor: '' });
    expect(await ledgerOf(services.pipeline)).toEqual(await ledgerOf(oracle));
    // p-z's only image vanished from Glance: tombstoned, it leaves the projects to look after.
    expect(Object.keys(await ledgerOf(oracle))).toEqual(['p-a', 'p-b', 'p-c', 'p-d', 'p-e']);
    expect(cli.glance.deleted.sort()).toEqual(['c-2', 'c-3', 'c-4']);
  });

  it('always finishes at least one project, and starts none within 30 s of the function timeout', async () => {
    const { glance, store } = cloud();
    const clock = { now: 0 };
    glance.onList = () => {
      clock.now += 100;
    };
    const services = servicesOver({ store, glance, limits: timed(clock), clock: () => clock.now });
    // The listing alone spent the budget: one project still moves the pass on.
    const tight = await reconcile(services.pipeline, { budgetMs: 50, resume: true });
    expect(tight.projects.map((p) => p.projectId)).toEqual(['p-a']);
    // Lambda says the timeout is near: the budget does not matter, nothing is started.
    const late = await reconcile(services.pipeline, { budgetMs: 600_000, resume: true, remainingMs: () => TIMEOUT_MARGIN_MS - 1 });
    expect(late.projects).toEqual([]);
    expect(late.cursor).toBe('p-a');
  });

  it('goes on past one project Glance fails for, and names it; the next pass does it again', async () => {
    const { glance, store } = cloud();
    glance.failing.add('p-c');
    const services = servicesOver({ store, glance, limits });
    const run = await reconcile(services.pipeline, { budgetMs: 600_000, resume: true });
    expect(run.projects.map((p) => p.projectId)).toEqual(['p-a', 'p-b', 'p-d', 'p-e']);
    expect(run).toMatchObject({ complete: true });
    expect(run.failures.map((f) => f.projectId)).toEqual(['p-c']);
    glance.failing.clear();
    const next = await reconcile(services.pipeline, { budgetMs: 600_000, resume: true });
    expect(next.projects.map((p) => p.projectId)).toContain('p-c');
    expect(next.failures).toEqual([]);
  });

  it('fails the run and keeps the cursor when Glance does not answer', async () => {
    const { glance, store } = cloud();
    const services = servicesOver({ store, glance, limits });
    await store.setState(RECONCILE_CURSOR, 'p-a');
    glance.failing.add('*');
    await expect(reconcileHandler(async () => services)(scheduledEvent)).rejects.toThrow(/Glance .* did not answer/);
    expect(await store.getState(RECONCILE_CURSOR)).toBe('p-a');
  });

  it(`stops after its first ${FAILED_IN_A_ROW} projects all fail (the store is down), fails the run and keeps the cursor`, async () => {
    const { glance, store } = cloud();
    const ledger = withOutage(store);
    const services = servicesOver({ store: ledger, glance, limits });
    await store.setState(RECONCILE_CURSOR, 'p-a');
    ledger.down = true;
    const handler = reconcileHandler(async () => services);
    await expect(handler(scheduledEvent)).rejects.toThrow(/ledger is unreachable/);
    expect(await store.getState(RECONCILE_CURSOR)).toBe('p-a');
    // The same pass, run by the CLI: three failures, then it stops rather than hammer the rest.
    const run = await reconcile(services.pipeline);
    expect(run.failures.map((f) => f.projectId)).toEqual(['p-a', 'p-b', 'p-c']);
    expect(run).toMatchObject({ complete: false, remaining: 2, projects: [] });
  });

  it('takes its budget from RECONCILE_BUDGET_SECONDS and its deadline from the Lambda context', async () => {
    const { glance, store } = cloud();
    const services = servicesOver({ store, glance, limits, env: { RECONCILE_BUDGET_SECONDS: '300' } });
    expect(services.config.reconcileBudgetMs).toBe(300_000);
    const handler = reconcileHandler(async () => services);
    const summary = await handler(scheduledEvent, { awsRequestId: 'r-1', getRemainingTimeInMillis: () => 900_000 });
    expect(summary).toMatchObject({ complete: true, remaining: 0 });
    await expect(handler({ Records: [] })).rejects.toThrow(EventShapeError);
  });
});
