import { describe, expect, it } from 'vitest';
import type { Pipeline } from '../../src/pipeline/index.js';
import { EventShapeError } from '../../src/doors/lambda/events.js';
import { reconcileHandler } from '../../src/doors/lambda/reconcile.js';
import type { GlanceImage, ImageStatus } from '../../src/ledger/glance-image.js';
import type { ProjectLimits } from '../../src/quota/limits.js';
import type { LimitSource } from '../../src/quota/limits.js';
import { FAILED_IN_A_ROW, reconcile, RECONCILE_PASS, TIMEOUT_MARGIN_MS } from '../../src/doors/reconcile.js';
import { MemoryStore } from '../../src/store/memory.js';
import { ev } from '../support/events.js';
import { MemoryGlance, scheduledEvent, servicesOver } from './support.js';
import { pipelineOf } from '../../src/composition-root.js';

/*
 * The scheduled reconcile: the CLI's reconcile (the one reconcile door), within a budget; a pass
 * that does not fit in one run resumes at the next one from the pass's state in the store
 * (Glance's marker, the sweep's and the decisions' cursors).
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

/** Runs the scheduled function's reconcile until its pass completes; the summaries of every run. */
async function untilComplete(pipeline: Pipeline, options: Parameters<typeof reconcile>[1], clock: { now: number }, maxRuns = 100) {
  const runs = [];
  do {
    clock.now += 60_000;
    runs.push(await reconcile(pipeline, options));
  } while (!runs.at(-1)!.complete && runs.length < maxRuns);
  return runs;
}

describe('the scheduled reconcile', () => {
  it('spreads a pass over runs within the budget, resuming where the last run stopped, and ends like the CLI', async () => {
    const { glance, store } = cloud();
    await seedVanished(store);
    // Pages of two images; each page takes 100 ms of the clock, and so does each project's decision.
    glance.pageSize = 2;
    const clock = { now: 0 };
    glance.onList = () => {
      clock.now += 100;
    };
    const services = servicesOver({ store, glance, limits: timed(clock), clock: () => clock.now });
    const budget = { budgetMs: 250 };

    const first = await reconcile(services.pipeline, budget);
    expect(first).toMatchObject({ complete: false, phase: 'list', listed: 6 });
    expect(first.pruned).toBeUndefined();
    const kept = JSON.parse((await store.getState(RECONCILE_PASS))!);
    expect(kept).toMatchObject({ id: first.passId, phase: 'list', position: { hidden: false, marker: 'c-3' } });

    const runs = [first, ...(await untilComplete(services.pipeline, budget, clock))];
    expect(runs.length).toBeGreaterThan(2);
    // One pass: every run worked on it, and Glance's listing was paged through once, never restarted.
    expect(new Set(runs.map((r) => r.passId))).toEqual(new Set([first.passId]));
    const listings = glance.calls.filter((c) => c.startsWith('LIST * '));
    expect(listings).toEqual([...new Set(listings)]);
    expect(runs.reduce((n, r) => n + r.listed, 0)).toBe(9);
    const last = runs.at(-1)!;
    expect(last).toMatchObject({ complete: true, phase: 'done', failures: [] });
    // A complete pass prunes the store, whichever door ran it, and leaves no pass behind.
    expect(last.pruned).toEqual({ messages: expect.any(Number), actions: expect.any(Number), deadImages: expect.any(Number) });
    expect(await store.getState(RECONCILE_PASS)).toBe('');
    expect(runs.reduce((n, r) => n + (r.corrected.vanished ?? 0), 0)).toBe(1);
    expect(glance.deleted.sort()).toEqual(['c-2', 'c-3', 'c-4']);

    // A new pass starts from the first page again.
    const again = await reconcile(services.pipeline, budget);
    expect(again.passId).not.toBe(first.passId);

    // The CLI's reconcile of the same cloud, in one go, into a fresh ledger: the same ledger.
    const cli = cloud();
    await seedVanished(cli.store);
    const oracle = pipelineOf({ store: cli.store, limits, images: cli.glance });
    const once = await reconcile(oracle);
    expect(once).toMatchObject({ complete: true, phase: 'done', decided: 5 });
    expect(await ledgerOf(services.pipeline)).toEqual(await ledgerOf(oracle));
    // p-z's only image vanished from Glance: tombstoned, it leaves the projects to look after.
    expect(Object.keys(await ledgerOf(oracle))).toEqual(['p-a', 'p-b', 'p-c', 'p-d', 'p-e']);
    expect(cli.glance.deleted.sort()).toEqual(['c-2', 'c-3', 'c-4']);
  });

  it('converges on a cloud whose listing takes longer than one run: 3,000 images, each run lists 5 of 30 pages', async () => {
    const glance = new MemoryGlance();
    const projects = Array.from({ length: 600 }, (_, n) => `p-${String(n).padStart(4, '0')}`);
    for (const [n, owner] of projects.entries())
      for (let k = 0; k < 5; k++) glance.add(image(`i-${String(n * 5 + k).padStart(5, '0')}`, owner, k % 2 ? 'active' : 'queued', k));
    // One project over its limit, one image the bus forged, one the bus never told of.
    for (let k = 0; k < 4; k++) glance.add(image(`over-${k}`, 'p-over', 'queued', 10 + k));
    const store = new MemoryStore();
    await store.applyEvents([ev({ imageId: 'forged-1', projectId: 'p-0001', status: 'queued', createdAt: 1_000 })], 1);
    glance.pageSize = 100;
    const clock = { now: 0 };
    glance.onList = () => {
      clock.now += 100;
    };
    const overLimit: LimitSource = { limitsFor: async (p) => (p === 'p-over' ? { image_count_total: 1 } : { image_count_total: 5 }) };
    const services = servicesOver({ store, glance, limits: overLimit, clock: () => clock.now });

    // The listing alone (31 pages of 100 ms) is six times the budget.
    const runs = await untilComplete(services.pipeline, { budgetMs: 450 }, clock);
    expect(runs.length).toBeGreaterThanOrEqual(6);
    expect(runs.at(-1)).toMatchObject({ complete: true, failures: [] });
    expect(runs.slice(0, -1).every((r) => !r.complete)).toBe(true);
    expect(runs.reduce((n, r) => n + r.listed, 0)).toBe(3004);
    // Each page was asked for once over all the runs.
    const listings = glance.calls.filter((c) => c.startsWith('LIST * '));
    expect(listings.length).toBe(31);
    expect(new Set(listings).size).toBe(31);
    // The ledger is Glance's: every project at its count, the forged image tombstoned, p-over at its limit.
    expect(glance.deleted.sort()).toEqual(['over-1', 'over-2', 'over-3']);
    expect((await store.usage('p-0001')).image_count_total).toBe(5);
    expect((await store.recordsOf(['forged-1']))[0]).toMatchObject({ deleted: true });
    expect((await store.projects()).length).toBe(601);
    for (const p of ['p-0000', 'p-0599', 'p-over']) expect((await store.usage(p)).image_count_total).toBe(p === 'p-over' ? 1 : 5);
  });

  it('sweeps forged owners in bulk before any decision: 2,000 made-up projects cost no limits read and no Glance call', async () => {
    const { glance, store } = cloud();
    // Owners sorting before every real project, each with a queued image the bus 'created'.
    await store.applyEvents(
      Array.from({ length: 2000 }, (_, n) =>
        ev({ imageId: `forged-${n}`, projectId: `-forged-${String(n).padStart(5, '0')}`, status: 'queued', createdAt: 1_000 }),
      ),
      1,
    );
    const asked: string[] = [];
    const counting: LimitSource = {
      limitsFor: async (p) => {
        asked.push(p);
        return limits.limitsFor(p);
      },
    };
    const services = servicesOver({ store, glance, limits: counting });
    const run = await reconcile(services.pipeline);
    expect(run).toMatchObject({ complete: true, decided: 5, corrected: { vanished: 2000 } });
    expect(asked.filter((p) => p.startsWith('-forged-'))).toEqual([]);
    expect(glance.calls.filter((c) => c.includes('forged'))).toEqual([]);
    expect(await store.projects()).toEqual(['p-a', 'p-b', 'p-c', 'p-d', 'p-e']);
    expect(glance.deleted.sort()).toEqual(['c-2', 'c-3', 'c-4']);
  });

  it('spares an image made while the pass ran, though the listing never showed it', async () => {
    const { glance, store } = cloud();
    glance.pageSize = 3;
    const clock = { now: Date.UTC(2026, 10, 26, 20, 30) };
    glance.onList = () => {
      clock.now += 1_000;
    };
    const services = servicesOver({ store, glance, limits, clock: () => clock.now });
    const first = await reconcile(services.pipeline, { budgetMs: 1 });
    expect(first.phase).toBe('list');
    // Between two runs of the pass, an upload begins; its notification arrives; Glance's listing is past it.
    const created = Math.floor(clock.now / 1000);
    await store.applyEvents([ev({ imageId: 'new-1', projectId: 'p-a', status: 'queued', createdAt: created, updatedAt: created })], clock.now);
    await untilComplete(services.pipeline, { budgetMs: 1 }, { now: 0 });
    expect((await store.recordsOf(['new-1']))[0]).toMatchObject({ deleted: false, status: 'queued' });
    expect((await store.usage('p-a')).image_count_total).toBe(2);
  });

  it('moves the pass by at least one page per run, and starts nothing within 30 s of the function timeout', async () => {
    const { glance, store } = cloud();
    glance.pageSize = 2;
    const clock = { now: 0 };
    glance.onList = () => {
      clock.now += 100;
    };
    const services = servicesOver({ store, glance, limits: timed(clock), clock: () => clock.now });
    // The budget is spent before the first page: that page is still listed, and only that page.
    const tight = await reconcile(services.pipeline, { budgetMs: 1 });
    expect(tight).toMatchObject({ phase: 'list', listed: 2 });
    // Lambda says the timeout is near: the budget does not matter, nothing is started.
    const before = glance.calls.length;
    const late = await reconcile(services.pipeline, { budgetMs: 600_000, remainingMs: () => TIMEOUT_MARGIN_MS - 1 });
    expect(late).toMatchObject({ listed: 0, decided: 0, complete: false });
    expect(glance.calls.length).toBe(before);
    expect(JSON.parse((await store.getState(RECONCILE_PASS))!).position).toEqual({ hidden: false, marker: 'b-1' });
  });

  it('goes on past one project Glance fails for, and names it; the next pass does it again', async () => {
    const { glance, store } = cloud();
    glance.failing.add('p-c');
    const services = servicesOver({ store, glance, limits });
    const run = await reconcile(services.pipeline, { budgetMs: 600_000 });
    expect(run).toMatchObject({ complete: true, decided: 4 });
    expect(run.failures.map((f) => f.projectId)).toEqual(['p-c']);
    glance.failing.clear();
    const next = await reconcile(services.pipeline, { budgetMs: 600_000 });
    expect(next.projects.map((p) => p.projectId)).toContain('p-c');
    expect(next.failures).toEqual([]);
    expect(glance.deleted.sort()).toEqual(['c-2', 'c-3', 'c-4']);
  });

  it('fails the run and keeps the pass where it was when Glance does not answer', async () => {
    const { glance, store } = cloud();
    glance.pageSize = 2;
    // Each page takes 100 ms of the test clock, so the first run stops within the listing: on the
    // wall clock, a fast machine listed every page within the 1 ms budget.
    const clock = { now: 0 };
    glance.onList = () => {
      clock.now += 100;
    };
    const services = servicesOver({ store, glance, limits, clock: () => clock.now });
    expect(await reconcile(services.pipeline, { budgetMs: 1 })).toMatchObject({ phase: 'list', complete: false });
    const kept = await store.getState(RECONCILE_PASS);
    glance.failing.add('*');
    await expect(reconcileHandler(async () => services)(scheduledEvent)).rejects.toThrow(/Glance .* did not answer/);
    expect(await store.getState(RECONCILE_PASS)).toBe(kept);
  });

  it(`stops after its first ${FAILED_IN_A_ROW} decisions all fail (Keystone is down), fails the run and keeps the pass before them`, async () => {
    const { glance, store } = cloud();
    let down = false;
    const flaky: LimitSource = {
      limitsFor: async (p) => {
        if (down) throw new Error('keystone at http://keystone.test:5000 did not answer');
        return limits.limitsFor(p);
      },
    };
    const services = servicesOver({ store, glance, limits: flaky });
    glance.onList = () => {
      down = true;
    };
    // The listing and the sweep need no limits; the decisions do, and Keystone went down meanwhile.
    const handler = reconcileHandler(async () => services);
    await expect(handler(scheduledEvent)).rejects.toThrow(/keystone .* did not answer/);
    const kept = JSON.parse((await store.getState(RECONCILE_PASS))!);
    expect(kept).toMatchObject({ phase: 'decide', projectCursor: '' });
    // The same pass, run by the CLI: it stops rather than hammer the rest.
    const run = await reconcile(services.pipeline);
    expect(run.failures.length).toBeGreaterThanOrEqual(FAILED_IN_A_ROW);
    expect(run).toMatchObject({ complete: false, decided: 0, projects: [], phase: 'decide' });
    expect(glance.deleted).toEqual([]);
    // Keystone is back: the pass goes on from the decisions and completes.
    down = false;
    glance.onList = () => {};
    expect(await reconcile(services.pipeline)).toMatchObject({ complete: true, decided: 5, passId: kept.id });
    expect(glance.deleted.sort()).toEqual(['c-2', 'c-3', 'c-4']);
  });

  it('leaves the pass to the run that holds it: a second run on the same ledger does nothing', async () => {
    const { glance, store } = cloud();
    const services = servicesOver({ store, glance, limits });
    let second: Promise<unknown> | undefined;
    glance.onList = () => {
      second ??= reconcile(services.pipeline);
    };
    const first = await reconcile(services.pipeline);
    expect(await second).toMatchObject({ busy: true, listed: 0, decided: 0, complete: false });
    expect(first).toMatchObject({ complete: true, decided: 5 });
    // Held no longer: the next run starts a new pass.
    const third = await reconcile(services.pipeline);
    expect(third).toMatchObject({ complete: true });
    expect(third.busy).toBeUndefined();
  });

  it('leaves a project another replica holds to that replica, and names it for a later look', async () => {
    const { glance, store } = cloud();
    const services = servicesOver({ store, glance, limits });
    // Another replica is deciding p-c (or died holding it): its lease stands for a minute.
    expect(await store.acquireLease('project:p-c', 'replica-b:1', 60_000, Date.now())).toBe(true);
    const deferred: string[] = [];
    const run = await reconcile(services.pipeline, { onDeferred: (p) => deferred.push(p) });
    expect(run).toMatchObject({ complete: true, decided: 4, deferred: 1, failures: [] });
    expect(deferred).toEqual(['p-c']);
    expect(glance.deleted).toEqual([]);
    expect(glance.calls.filter((c) => c === 'LIST p-c')).toEqual([]);
  });

  it('takes its budget from RECONCILE_BUDGET_SECONDS and its deadline from the Lambda context', async () => {
    const { glance, store } = cloud();
    const services = servicesOver({ store, glance, limits, env: { RECONCILE_BUDGET_SECONDS: '300' } });
    expect(services.config.reconcileBudgetMs).toBe(300_000);
    const handler = reconcileHandler(async () => services);
    const summary = await handler(scheduledEvent, { awsRequestId: 'r-1', getRemainingTimeInMillis: () => 900_000 });
    expect(summary).toMatchObject({ complete: true, phase: 'done' });
    await expect(handler({ Records: [] })).rejects.toThrow(EventShapeError);
  });
});
