import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { reconcile, RECONCILE_PASS } from '../../src/doors/reconcile.js';
import type { GlanceImage, ImageStatus } from '../../src/ledger/glance-image.js';
import { usageOf } from '../../src/ledger/usage.js';
import type { Pipeline } from '../../src/pipeline/index.js';
import type { LimitSource, ProjectLimits } from '../../src/quota/limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { BULK_BELOW, SqliteStore } from '../../src/store/sqlite.js';
import { ev, MiB } from '../support/events.js';
import { MemoryGlance, servicesOver } from '../functions/support.js';

/*
 * A first reconcile pass over an SQLite ledger stages its listing and loads it at once, sorted,
 * when the listing ends (BulkListing): the ledger it leaves must be the one the page-by-page pass
 * leaves, whatever the bus wrote while the pass listed, and over several runs.
 */

const dir = mkdtempSync(join(tmpdir(), 'gqe-bulk-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const freshPath = () => join(dir, `ledger-${++n}.db`);

/** The day the test clock starts at; Glance's images are older. */
const T0 = Date.UTC(2026, 11, 1);

const limits: LimitSource = { limitsFor: async (p: string): Promise<ProjectLimits> => (p === 'p-c' ? { image_count_total: 1 } : {}) };

function image(id: string, owner: string | null, status: ImageStatus, size: number | null = null, extra: Partial<GlanceImage> = {}): GlanceImage {
  const at = '2026-11-26T20:00:00Z';
  return { id, owner, status, protected: false, size, created_at: at, updated_at: at, visibility: 'private', ...extra };
}

/** Every kind of record the totals count differently, an image with no owner, and a project over its limit. */
function glance(): MemoryGlance {
  return new MemoryGlance().add(
    image('a-1', 'p-a', 'active', 3 * MiB),
    image('b-1', 'p-b', 'queued'),
    image('b-2', 'p-b', 'active', 2 * MiB, { os_glance_importing_to_stores: 'fast' }),
    image('b-3', 'p-b', 'uploading', 4 * MiB),
    ...[1, 2, 3, 4].map((k) => image(`c-${k}`, 'p-c', 'queued')),
    image('d-1', 'p-d', 'killed'),
    image('e-1', 'p-e', 'saving', 5 * MiB),
    image('f-1', null, 'active', MiB),
  );
}

/**
 * One cloud, one ledger: a record the bus left before the pass that Glance no longer has (y-1),
 * and while the pass lists (pages of 2, the clock 10 s on a page): e-1 tombstoned by the bus
 * before its page is listed (the listing, newer, brings it back), a-1 deactivated after its page
 * was listed (the bus, newer, stands), and z-9 made after the pass began, which Glance never lists
 * (the sweep spares it).
 */
async function run(store: LedgerStore, budgetMs?: number) {
  const cloud = glance();
  cloud.pageSize = 2;
  const clock = { now: T0 };
  let pages = 0;
  const bus: { atPage: number; write: () => Promise<unknown> }[] = [
    {
      atPage: 2,
      write: () => store.applyEvents([ev({ imageId: 'e-1', projectId: 'p-e', status: 'deleted', deleted: true, updatedAt: clock.now / 1000 })], clock.now),
    },
    { atPage: 2, write: () => store.applyEvents([ev({ imageId: 'z-9', projectId: 'p-z', status: 'queued', createdAt: clock.now / 1000 })], clock.now) },
    {
      atPage: 3,
      write: () => store.applyEvents([ev({ imageId: 'a-1', projectId: 'p-a', status: 'deactivated', size: 3 * MiB, updatedAt: clock.now / 1000 })], clock.now),
    },
  ];
  cloud.onList = (owner) => {
    if (owner !== undefined) return;
    clock.now += 10_000;
    pages++;
  };
  await store.applyEvents([ev({ imageId: 'y-1', projectId: 'p-y', status: 'active', size: MiB, createdAt: 1_000 })], clock.now);
  const services = servicesOver({ store, glance: cloud, limits, clock: () => clock.now });
  // The bus's writes land between pages, as consume's batches do between the reconcile's awaits.
  const list = services.pipeline.listPages.bind(services.pipeline);
  services.pipeline.listPages = (query) =>
    (async function* () {
      for await (const page of list(query)) {
        for (const b of bus.filter((b) => b.atPage === pages)) {
          await b.write();
          bus.splice(bus.indexOf(b), 1);
        }
        yield page;
      }
    })();
  const runs = [];
  do runs.push(await reconcile(services.pipeline, budgetMs === undefined ? {} : { budgetMs }));
  while (!runs.at(-1)!.complete && runs.length < 50);
  return { runs, pipeline: services.pipeline, cloud };
}

/** Each project's usage and records, and whether the store's totals are its records' (no clock-stamped fields). */
async function ledgerOf(pipeline: Pipeline) {
  const out: Record<string, unknown> = {};
  for (const p of await pipeline.ledger.projects()) {
    const images = await pipeline.ledger.images(p);
    const records = images.map(({ imageId, status, size, deleted }) => ({ imageId, status, size, deleted })).sort((a, b) => (a.imageId < b.imageId ? -1 : 1));
    out[p] = { usage: await pipeline.ledger.usage(p), counted: usageOf(images), records };
  }
  return out;
}

describe('a first pass staged and loaded in bulk (SQLite)', () => {
  it('leaves the ledger the page-by-page pass leaves, the bus writes of the listing included, and later passes go page by page', async () => {
    const sqlite = SqliteStore.open(freshPath());
    const staged = await run(sqlite);
    expect(staged.runs.at(-1)).toMatchObject({ complete: true, failures: [] });
    const oracle = await run(new MemoryStore());
    expect(await ledgerOf(staged.pipeline)).toEqual(await ledgerOf(oracle.pipeline));

    const ledger = (await ledgerOf(staged.pipeline)) as Record<string, { usage: unknown; counted: unknown; records: { imageId: string; status: string }[] }>;
    for (const p of Object.values(ledger)) expect(p.usage).toEqual(p.counted);
    // The rules, not only the agreement: the listing overwrote the older tombstone, the newer
    // deactivation stood, the image made during the pass was spared and the one Glance lost swept.
    expect(ledger['p-e']!.records).toEqual([{ imageId: 'e-1', status: 'saving', size: 5 * MiB, deleted: false }]);
    expect(ledger['p-a']!.records).toEqual([{ imageId: 'a-1', status: 'deactivated', size: 3 * MiB, deleted: false }]);
    expect(ledger['p-z']!.records).toMatchObject([{ imageId: 'z-9', status: 'queued', deleted: false }]);
    expect(ledger['p-y']).toBeUndefined();
    expect(ledger['p-b']!.usage).toEqual({ image_count_total: 3, image_count_uploading: 2, image_size_total: 6, image_stage_total: 6 });
    expect(staged.cloud.deleted.sort()).toEqual(['c-2', 'c-3', 'c-4']);
    // The page-by-page pass counts e-1 resurrected (the bus had tombstoned it); a staged pass, which
    // reads nothing as it lists, counts every listed image of a ledger this new as missing.
    expect(oracle.runs[0]!.corrected).toEqual({ missing: 9, resurrected: 1, vanished: 1 });
    expect(staged.runs[0]!.corrected).toEqual({ missing: 10, vanished: 1 });

    // The staging is gone, and the next pass marks page by page: nothing of its listing is staged.
    const next = await run(sqlite, 0);
    expect(JSON.parse((await sqlite.getState(RECONCILE_PASS)) || '{"staged":false}')).toMatchObject({ staged: false });
    expect(next.runs.at(-1)).toMatchObject({ complete: true });
    await sqlite.close();
  });

  it('keeps its staging across runs: a pass cut by its budget resumes it and ends with the same ledger', async () => {
    const path = freshPath();
    const sqlite = SqliteStore.open(path);
    const spread = await run(sqlite, 0);
    expect(spread.runs.length).toBeGreaterThan(3);
    expect(spread.runs[0]).toMatchObject({ complete: false, phase: 'list' });
    const oneGo = SqliteStore.open(freshPath());
    const once = await run(oneGo);
    expect(await ledgerOf(spread.pipeline)).toEqual(await ledgerOf(once.pipeline));
    const db = new Database(path, { readonly: true });
    expect(db.prepare("SELECT name FROM sqlite_master WHERE name LIKE 'images_staged%'").all()).toEqual([]);
    db.close();
    await sqlite.close();
    await oneGo.close();
  });

  it('finishes a page staged twice (a run stopped before saving its place) with each image once', async () => {
    const store = SqliteStore.open(freshPath());
    const bulk = store.bulkListing;
    expect(await bulk.begin()).toBe(true);
    const page = [ev({ imageId: 'i-1', projectId: 'p', status: 'active', size: MiB }), ev({ imageId: 'i-2', projectId: 'p', status: 'queued' })];
    await bulk.stage(page, 'pass-1', T0);
    await bulk.stage(page, 'pass-1', T0);
    await bulk.stage([ev({ imageId: 'i-3', projectId: 'q', status: 'queued' })], 'pass-1', T0);
    expect(await bulk.finish('pass-1', T0, 60_000)).toEqual({ staged: 5 });
    expect((await store.images('p')).map((r) => r.imageId).sort()).toEqual(['i-1', 'i-2']);
    expect(await store.usage('p')).toMatchObject({ image_count_total: 2, image_size_total: 1 });
    expect((await store.unmarkedLive('pass-1', '', 10)).records).toEqual([]);
    // Finished twice (a run stopped before saving that it had): nothing staged, nothing changes.
    expect(await bulk.finish('pass-1', T0, 60_000)).toEqual({ staged: 0 });
    expect(await store.usage('q')).toMatchObject({ image_count_total: 1 });
    await store.close();
  });

  it('stages only on a ledger no pass has listed and that holds few records; a new pass drops what an abandoned one staged', async () => {
    const store = SqliteStore.open(freshPath());
    expect(await store.bulkListing.begin()).toBe(true);
    await store.bulkListing.stage([ev({ imageId: 'left', projectId: 'p' })], 'abandoned', T0);
    expect(await store.bulkListing.begin()).toBe(true);
    expect(await store.bulkListing.finish('pass-2', T0, 60_000)).toEqual({ staged: 0 });
    expect(await store.images('p')).toEqual([]);

    await store.applyEvents([ev({ imageId: 'x', projectId: 'p' })], T0);
    expect(await store.bulkListing.begin()).toBe(true);
    await store.markListed(['x'], 'pass-3');
    expect(await store.bulkListing.begin()).toBe(false);
    await store.close();

    const full = SqliteStore.open(freshPath());
    const many = Array.from({ length: BULK_BELOW }, (_, k) => ev({ imageId: `i-${k}`, projectId: 'p', status: 'active' }));
    await full.applyEvents(many, T0, { overwrite: true });
    expect(await full.bulkListing.begin()).toBe(false);
    await full.close();
  });
});
