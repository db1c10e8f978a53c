import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ImageRecord } from '../../src/ledger/record.js';
import { usageFromTotals, usageOf } from '../../src/ledger/usage.js';
import { parseNotification, type ImageEvent } from '../../src/notification/parse.js';
import { StoreDataError } from '../../src/errors.js';
import { applyIsolatingPoison } from '../../src/store/isolate.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { snapshot } from './shared-ledger.contract.js';
import { ev, MiB } from '../support/events.js';
import { DOOR, captures, envelope, inner, quotaTestBodies } from '../support/fixtures.js';
import { pipelineOf } from '../../src/composition-root.js';

/**
 * Events no store can keep exactly, built directly (the door rejects most of them before any
 * store sees them; the stores must be safe by themselves).
 */
const UNSTORABLE: Record<string, Partial<ImageEvent>> = {
  'a NUL byte in the image id': { imageId: 'nul\u0000id' },
  'a NUL byte in the project id': { projectId: 'p\u0000' },
  'a lone surrogate in the image id': { imageId: 'lone\ud800' },
  'a lone low surrogate in the message id': { messageId: 'm-\udc00-lone' },
  'a size past 2^53': { size: 2 ** 63, status: 'active' },
  'a fractional size': { size: 1.5, status: 'active' },
  'a negative size': { size: -1, status: 'active' },
  'a timestamp past 2^53': { timestamp: 1e20 },
  'a created_at that is not a number': { createdAt: Number.NaN },
};

/** The day these tests are judged at: after every captured and generated body. */
const NOW = Date.UTC(2026, 11, 1);

/**
 * The behaviour every ledger store must have. Each adapter's test file calls this with a factory
 * that gives a fresh, empty store.
 */
export function describeLedgerStore(name: string, open: () => Promise<LedgerStore>): void {
  describe(`${name}: the ledger store contract`, () => {
    let store: LedgerStore;
    beforeEach(async () => {
      store = await open();
    });
    afterEach(async () => {
      // When open() failed, its own error is the one to read.
      await store?.close();
    });

    it('starts empty', async () => {
      expect(await store.projects()).toEqual([]);
      expect(await store.usage('nobody')).toEqual({ image_count_total: 0, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 });
    });

    it("replays the lab's real notifications into Glance's final state", async () => {
      const events = captures()
        .map((c) => parseNotification(c.body, NOW, DOOR))
        .flatMap((o) => (o.kind === 'image' ? [o.event] : []));
      const result = await store.applyEvents(events, 1);
      expect(result.outcomes.every((o) => o === 'applied')).toBe(true);
      const project = '615696c542784834ac46630e5a22dbe3';
      // Every image of the run is gone, so the project is no longer one to reconcile or look up.
      expect(await store.projects()).toEqual([]);
      const images = await store.images(project);
      // Three images were created in the run and all three were deleted at its end.
      expect(images).toHaveLength(3);
      expect(images.every((r) => r.deleted)).toBe(true);
      expect(await store.usage(project)).toEqual(usageOf(images));
    });

    it('reports each message id once: repeats in the batch and in later batches are duplicates', async () => {
      const a = ev({ imageId: 'a', status: 'active', size: 3 * MiB });
      const r1 = await store.applyEvents([a, a], 1);
      expect(r1.outcomes).toEqual(['applied', 'duplicate']);
      const r2 = await store.applyEvents([a], 2);
      expect(r2.outcomes).toEqual(['duplicate']);
      expect(r2.projects).toEqual([]);
      expect((await store.usage('p1')).image_size_total).toBe(3);
    });

    it('returns, when it returns totals at all, the totals it committed for the projects the batch changed', async () => {
      const batches: ImageEvent[][] = [
        [ev({ imageId: 'a', status: 'active', size: 3 * MiB }), ev({ imageId: 'b', projectId: 'p2', status: 'queued' })],
        [ev({ imageId: 'b', projectId: 'p2', status: 'saving', size: 2 * MiB, updatedAt: 2 }), ev({ imageId: 'c', status: 'uploading', size: MiB })],
        // An owner change, then a delete: both sides' totals move.
        [
          ev({ imageId: 'a', projectId: 'p2', status: 'active', size: 3 * MiB, updatedAt: 3 }),
          ev({ imageId: 'c', status: 'uploading', size: MiB, deleted: true, updatedAt: 4 }),
        ],
      ];
      for (const [i, batch] of batches.entries()) {
        const result = await store.applyEvents(batch, 10 + i);
        for (const [p, totals] of result.totals ?? []) {
          expect(result.projects).toContain(p);
          expect(usageFromTotals(totals)).toEqual(await store.usage(p));
        }
      }
    });

    it('keeps totals equal to a scan of the records through updates, deletes and owner changes', async () => {
      const events: ImageEvent[] = [
        ev({ imageId: 'a', projectId: 'p1', status: 'queued', updatedAt: 1 }),
        ev({ imageId: 'a', projectId: 'p1', status: 'uploading', size: 4 * MiB, updatedAt: 2 }),
        ev({ imageId: 'b', projectId: 'p1', status: 'active', size: 2 * MiB, importing: 'store2', updatedAt: 3 }),
        ev({ imageId: 'c', projectId: 'p2', status: 'active', size: MiB, updatedAt: 4 }),
      ];
      expect((await store.applyEvents(events, 1)).projects).toEqual(['p1', 'p2']);
      expect(await store.usage('p1')).toEqual({ image_count_total: 2, image_count_uploading: 2, image_size_total: 6, image_stage_total: 6 });

      const later: ImageEvent[] = [
        ev({ imageId: 'b', projectId: 'p2', status: 'active', size: 2 * MiB, updatedAt: 5 }),
        ev({ imageId: 'a', projectId: 'p1', status: 'deleted', eventType: 'image.delete', deleted: true, size: 4 * MiB, updatedAt: 6 }),
        ev({ imageId: 'a', projectId: 'p1', status: 'active', size: 4 * MiB, updatedAt: 3 }),
      ];
      const r = await store.applyEvents(later, 2);
      expect(r.projects).toEqual(['p1', 'p2']);
      for (const p of ['p1', 'p2']) expect(await store.usage(p)).toEqual(usageOf(await store.images(p)));
      expect((await store.usage('p1')).image_count_total).toBe(0);
      expect(await store.usage('p2')).toEqual({ image_count_total: 2, image_count_uploading: 0, image_size_total: 3, image_stage_total: 0 });
      // p1 has records still (a tombstone), but no live image.
      expect(await store.projects()).toEqual(['p2']);
    });

    it("reads a page of projects' usage at once, each as `usage` reads it; a project it never saw is at zero", async () => {
      const events = Array.from({ length: 30 }, (_, n) =>
        ev({
          imageId: `u-${n}`,
          projectId: `p-${n % 7}`,
          status: n % 3 ? 'active' : 'uploading',
          size: n % 3 ? (n + 1) * MiB : null,
          importing: n === 4 ? 's2' : '',
        }),
      );
      await store.applyEvents(events, 1);
      await store.applyEvents([ev({ imageId: 'u-0', projectId: 'p-0', status: 'deleted', eventType: 'image.delete', deleted: true, updatedAt: 9 })], 2);
      const projects = ['p-3', 'never', ...Array.from({ length: 7 }, (_, n) => `p-${n}`)];
      const got = await store.usages(projects);
      expect([...got.keys()].sort()).toEqual([...new Set(projects)].sort());
      for (const p of projects) expect(got.get(p)).toEqual(await store.usage(p));
      expect(got.get('never')).toEqual({ image_count_total: 0, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 });
      expect(got.get('p-1')!.image_count_total).toBeGreaterThan(0);
      expect(await store.usages([])).toEqual(new Map());
    });

    it('reads the newest live queued images for the count rule, as many as asked', async () => {
      await store.applyEvents(
        [
          ev({ imageId: 'old', status: 'queued', createdAt: 10 }),
          ev({ imageId: 'b', status: 'queued', createdAt: 30 }),
          ev({ imageId: 'a', status: 'queued', createdAt: 30 }),
          ev({ imageId: 'new', status: 'queued', createdAt: 40 }),
          ev({ imageId: 'up', status: 'saving', createdAt: 50 }),
          ev({ imageId: 'gone', status: 'deleted', deleted: true, createdAt: 60 }),
          ev({ imageId: 'other', projectId: 'p2', status: 'queued', createdAt: 70 }),
        ],
        1,
      );
      expect((await store.removableImages('p1', 3)).map((r) => r.imageId)).toEqual(['new', 'b', 'a']);
      expect((await store.removableImages('p1', 10)).map((r) => r.imageId)).toEqual(['new', 'b', 'a', 'old']);
      expect(await store.removableImages('nobody', 5)).toEqual([]);
      // Leaving queued, changing owner, being deleted: each takes an image out of its old project's list.
      await store.applyEvents(
        [
          ev({ imageId: 'b', status: 'saving', createdAt: 30, updatedAt: 2_000 }),
          ev({ imageId: 'old', projectId: 'p2', status: 'queued', createdAt: 10, updatedAt: 2_000 }),
          ev({ imageId: 'a', status: 'deleted', deleted: true, createdAt: 30, updatedAt: 2_000 }),
        ],
        2,
      );
      expect((await store.removableImages('p1', 10)).map((r) => r.imageId)).toEqual(['new']);
      expect((await store.removableImages('p2', 10)).map((r) => r.imageId)).toEqual(['other', 'old']);
      // Glance's word puts one back.
      await store.applyEvents([ev({ imageId: 'b', status: 'queued', createdAt: 30, updatedAt: 1 })], 3, { overwrite: true });
      expect((await store.removableImages('p1', 10)).map((r) => r.imageId)).toEqual(['new', 'b']);
    });

    it('orders versions exactly: microseconds near 2^52 and message ids as JavaScript compares them', async () => {
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
      const byId = (await store.images('p1')).sort((x, y) => (x.imageId < y.imageId ? -1 : 1));
      expect(byId.map((r) => r.status)).toEqual(['queued', 'active', 'saving']);
    });

    it('lists only projects with a live image: forged projects whose images are gone cost nothing', async () => {
      await store.applyEvents(
        [
          ev({ imageId: 'x', projectId: 'gone', status: 'deleted', deleted: true }),
          ev({ imageId: 'k', projectId: 'failed', status: 'killed' }),
          ev({ imageId: 'q', projectId: 'live', status: 'queued' }),
          ev({ imageId: 'm', projectId: 'moved-away', status: 'active' }),
        ],
        1,
      );
      expect(await store.projects()).toEqual(['live', 'moved-away']);
      await store.applyEvents([ev({ imageId: 'm', projectId: 'live', status: 'active', updatedAt: 2_000 })], 2);
      expect(await store.projects()).toEqual(['live']);
      // The records are still there (tombstones are what keep a late create from counting again).
      expect((await store.images('gone'))[0]).toMatchObject({ imageId: 'x', deleted: true });
    });

    it('forgets dead records past their retention; usage and live records are untouched', async () => {
      const events = [
        ev({ imageId: 'old-tomb', projectId: 'gone', status: 'deleted', deleted: true, updatedAt: 100 }),
        ev({ imageId: 'old-killed', projectId: 'p1', status: 'killed', updatedAt: 100 }),
        ev({ imageId: 'old-live', projectId: 'p1', status: 'active', size: MiB, updatedAt: 100 }),
        ev({ imageId: 'new-tomb', projectId: 'p1', status: 'deleted', deleted: true, updatedAt: 300 }),
        ev({ imageId: 'was-dead', projectId: 'p2', status: 'active', deleted: true, updatedAt: 100 }),
      ];
      await store.applyEvents(events, 1);
      const usage = await store.usage('p1');
      // updated_at is in seconds: 200 s ago is the cut, exclusive.
      expect(await store.forgetDeadImagesBefore(100_000)).toBe(0);
      expect(await store.forgetDeadImagesBefore(200_000)).toBe(3);
      expect((await store.images('p1')).map((r) => r.imageId).sort()).toEqual(['new-tomb', 'old-live']);
      expect(await store.images('gone')).toEqual([]);
      expect(await store.images('p2')).toEqual([]);
      expect(await store.usage('p1')).toEqual(usage);
      expect(await store.usage('gone')).toEqual(usageOf([]));
      expect(await store.projects()).toEqual(['p1']);
      // The ledger goes on as before: the totals still add up after more changes.
      await store.applyEvents([ev({ imageId: 'old-live', projectId: 'p1', status: 'deleted', deleted: true, updatedAt: 400 })], 2);
      expect(await store.usage('p1')).toEqual(usageOf(await store.images('p1')));
      expect(await store.forgetDeadImagesBefore(1_000_000)).toBe(2);
      expect(await store.images('p1')).toEqual([]);
      expect(await store.projects()).toEqual([]);
    });

    it('keeps the record fields as given', async () => {
      const e = ev({ imageId: 'f', projectId: 'p9', status: 'active', size: 123, createdAt: 50, updatedAt: 60, importing: 'a,b', protected: true });
      await store.applyEvents([e], 1);
      expect(await store.images('p9')).toEqual([
        {
          imageId: 'f',
          projectId: 'p9',
          status: 'active',
          size: 123,
          createdAt: 50,
          updatedAt: 60,
          timestamp: e.timestamp,
          messageId: e.messageId,
          importing: 'a,b',
          protected: true,
          deleted: false,
        },
      ]);
    });

    it('forgets message ids older than the retention; a late redelivery then changes nothing', async () => {
      const a = ev({ imageId: 'a', status: 'active', size: MiB, updatedAt: 5 });
      const b = ev({ imageId: 'b', status: 'active', size: MiB, updatedAt: 5 });
      await store.applyEvents([a], 1_000);
      await store.applyEvents([b], 5_000);
      expect(await store.forgetMessagesBefore(2_000)).toBe(1);
      const r = await store.applyEvents([a, b], 6_000);
      expect(r.outcomes).toEqual(['applied', 'duplicate']);
      expect(r.projects).toEqual([]);
      expect(await store.usage('p1')).toMatchObject({ image_count_total: 2, image_size_total: 2 });
    });

    it('applies events the enforcer made itself without remembering their ids', async () => {
      const listed = ev({ imageId: 'a', status: 'active', size: MiB, messageId: 'glance-listing' });
      expect((await store.applyEvents([listed], 1, { dedupe: false })).outcomes).toEqual(['applied']);
      expect((await store.applyEvents([listed], 2, { dedupe: false })).outcomes).toEqual(['applied']);
      expect((await store.applyEvents([listed], 3)).outcomes).toEqual(['applied']);
      expect((await store.usage('p1')).image_count_total).toBe(1);
    });

    it('keeps an audit trail, once per would-delete, bounded in time', async () => {
      const base = {
        over: ['image_count_total' as const],
        usage: { image_count_total: 6, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 },
        limits: { image_count_total: 5 },
      };
      const kept = await store.recordActions([
        { ...base, atMs: 10, projectId: 'p1', imageId: 'a', action: 'would-delete', reason: 'queued, past image_count_total' },
        { ...base, atMs: 11, projectId: 'p2', imageId: 'b', action: 'skipped', reason: 'status is active' },
      ]);
      expect(kept).toHaveLength(2);
      const again = await store.recordActions([{ ...base, atMs: 20, projectId: 'p1', imageId: 'a', action: 'would-delete', reason: 'again' }]);
      expect(again).toEqual([]);
      await store.recordActions([{ ...base, atMs: 30, projectId: 'p1', imageId: 'a', action: 'deleted', reason: 'deleted' }]);
      expect((await store.actions({ projectId: 'p1' })).map((a) => a.action)).toEqual(['would-delete', 'deleted']);
      expect(await store.actions({ sinceMs: 11 })).toHaveLength(2);
      expect((await store.actions())[0]).toEqual({
        ...base,
        atMs: 10,
        projectId: 'p1',
        imageId: 'a',
        action: 'would-delete',
        reason: 'queued, past image_count_total',
      });
      expect(await store.forgetActionsBefore(12)).toBe(2);
      expect((await store.actions()).map((a) => a.atMs)).toEqual([30]);
      // Forgotten with its record, a would-delete may be recorded again.
      expect(await store.recordActions([{ ...base, atMs: 40, projectId: 'p1', imageId: 'a', action: 'would-delete', reason: 'again' }])).toHaveLength(1);
    });

    it("lets Glance's word overwrite what forged notifications left: a future-dated record, a sticky tombstone", async () => {
      // The bus claimed: image a is active and dated in 9999, image b was deleted in 2099.
      await store.applyEvents(
        [
          ev({ imageId: 'a', status: 'active', size: 5 * MiB, updatedAt: 8_000_000_000 }),
          ev({ imageId: 'b', status: 'queued', updatedAt: 1_000 }),
          ev({ imageId: 'b', status: 'deleted', deleted: true, updatedAt: 4_070_908_800 }),
        ],
        1,
      );
      expect((await store.usage('p1')).image_count_total).toBe(1);
      // A plain merge cannot undo either: the forged versions are newer and the tombstone is sticky.
      const fromGlance = [
        ev({ messageId: 'glance-api:a', imageId: 'a', status: 'queued', updatedAt: 2_000 }),
        ev({ messageId: 'glance-api:b', imageId: 'b', status: 'queued', updatedAt: 2_000 }),
      ];
      await store.applyEvents(fromGlance, 2, { dedupe: false });
      expect((await store.usage('p1')).image_count_total).toBe(1);
      // Glance's listing overwrites outright.
      const r = await store.applyEvents(fromGlance, 3, { overwrite: true });
      expect(r.projects).toEqual(['p1']);
      const images = await store.images('p1');
      expect(images.map((i) => [i.imageId, i.status, i.deleted, i.updatedAt]).sort()).toEqual([
        ['a', 'queued', false, 2_000],
        ['b', 'queued', false, 2_000],
      ]);
      expect(await store.usage('p1')).toEqual(usageOf(images));
      expect((await store.usage('p1')).image_count_total).toBe(2);
      // The same listing again changes nothing; a changed state under the same id is applied.
      expect((await store.applyEvents(fromGlance, 4, { overwrite: true })).projects).toEqual([]);
      await store.applyEvents([{ ...fromGlance[0]!, status: 'active', size: 3 * MiB, updatedAt: 2_100 }], 5, { overwrite: true });
      expect(await store.usage('p1')).toEqual({ image_count_total: 2, image_count_uploading: 0, image_size_total: 3, image_stage_total: 0 });
      // Overwrite never marks message ids as seen: the notification that comes later still counts.
      const later = ev({ imageId: 'a', status: 'deleted', deleted: true, updatedAt: 2_200 });
      expect((await store.applyEvents([later], 6)).outcomes).toEqual(['applied']);
      expect((await store.usage('p1')).image_count_total).toBe(1);
    });

    it.each(Object.entries(UNSTORABLE))('refuses %s with a StoreDataError and keeps nothing of the batch', async (_, hostile) => {
      const ok = ev({ imageId: 'ok', projectId: 'p2', status: 'active', size: MiB });
      const err = await store.applyEvents([ok, ev({ imageId: 'bad', ...hostile })], 1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StoreDataError);
      expect(await store.projects()).toEqual([]);
      expect(await store.usage('p2')).toMatchObject({ image_count_total: 0 });
      // Nothing was recorded as processed: the good message alone is applied afterwards.
      expect((await store.applyEvents([ok], 2)).outcomes).toEqual(['applied']);
    });

    it('refuses a batch that would take a total past 2^53, before writing anything', async () => {
      const huge = Number.MAX_SAFE_INTEGER - 10;
      await store.applyEvents([ev({ imageId: 'huge', status: 'active', size: huge })], 1);
      const other = ev({ imageId: 'other', projectId: 'p2', status: 'active', size: MiB });
      const err = await store.applyEvents([other, ev({ imageId: 'tip', status: 'active', size: 11 })], 2).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StoreDataError);
      expect((err as Error).message).toMatch(/p1.*2\^53/);
      // The innocent project's totals and the processed ids are untouched (Redis: nothing of
      // the script was written, 'seen' included).
      expect(await store.usage('p2')).toMatchObject({ image_count_total: 0 });
      expect(await store.images('p1')).toHaveLength(1);
      expect((await store.usage('p1')).image_size_total).toBe(Math.floor(huge / MiB));
      expect((await store.applyEvents([other], 3)).outcomes).toEqual(['applied']);
    });

    it('isolates the messages it refuses; every other message of the batch is counted exactly', async () => {
      await store.applyEvents([ev({ imageId: 'huge', projectId: 'full', status: 'active', size: Number.MAX_SAFE_INTEGER - 10 })], 1);
      const valid = Array.from({ length: 40 }, (_, i) =>
        ev({ imageId: `img-${i}`, projectId: `p${i % 3}`, status: i % 2 ? 'active' : 'queued', size: i % 2 ? i * MiB : null }),
      );
      const hostile = [
        ev({ imageId: 'nul\u0000', projectId: 'p0' }),
        // Distinct in JS, the same U+FFFD in UTF-8: one ON CONFLICT command would meet one row twice.
        ev({ imageId: 'x\ud800', projectId: 'p1' }),
        ev({ imageId: 'x\ud801', projectId: 'p1' }),
        ev({ imageId: 'tip', projectId: 'full', status: 'active', size: 11 }),
        ev({ imageId: 'big', projectId: 'p2', status: 'active', size: 2 ** 63 }),
      ];
      const batch = [...valid];
      hostile.forEach((h, k) => {
        batch.splice(k * 9 + 3, 0, h);
      });
      const { outcomes, projects } = await applyIsolatingPoison(store, batch, 2);
      outcomes.forEach((o, i) => {
        if (hostile.includes(batch[i]!)) expect(o).toEqual({ refused: expect.stringMatching(/NUL|surrogate|2\^53/) });
        else expect(o).toBe('applied');
      });
      expect(projects).toEqual(['p0', 'p1', 'p2']);
      for (const p of ['p0', 'p1', 'p2', 'full']) expect(await store.usage(p)).toEqual(usageOf(await store.images(p)));
      expect((await store.usage('p1')).image_count_total).toBe(13);
      expect((await store.images('full')).map((r) => r.imageId)).toEqual(['huge']);
    });

    it('any mix of valid and unstorable events: every valid one counted as if alone, every other refused', async () => {
      let run = 0;
      const hostile = fc.constantFrom<Partial<ImageEvent>>(
        ...Object.values(UNSTORABLE),
        { imageId: 'twin\ud800' },
        { imageId: 'twin\udbff' },
        { messageId: 'same\udfff', imageId: 'twin\ud800' },
      );
      const item = fc.oneof(
        {
          weight: 4,
          arbitrary: fc.record({
            image: fc.integer({ min: 0, max: 6 }),
            project: fc.integer({ min: 0, max: 2 }),
            status: fc.constantFrom('queued', 'active', 'saving', 'killed'),
            size: fc.integer({ min: 0, max: 4 * MiB }),
            deleted: fc.boolean(),
            updatedAt: fc.integer({ min: 1, max: 9 }),
          }),
        },
        { weight: 1, arbitrary: hostile.map((h) => ({ hostile: h })) },
      );
      await fc.assert(
        fc.asyncProperty(fc.array(item, { minLength: 1, maxLength: 40 }), async (items) => {
          // Each run writes under projects of its own, so one store serves every run.
          const tag = `r${++run}-`;
          const batch = items.map((x) =>
            'hostile' in x
              ? ev({ imageId: 'h', ...x.hostile, projectId: x.hostile.projectId ?? `${tag}p0` })
              : ev({
                  imageId: `${tag}i${x.image}`,
                  projectId: `${tag}p${x.project}`,
                  status: x.status,
                  size: x.size,
                  deleted: x.deleted,
                  updatedAt: x.updatedAt,
                }),
          );
          const { outcomes } = await applyIsolatingPoison(store, batch, run);
          const oracle = new MemoryStore();
          const valid = batch.filter((_, i) => !('hostile' in items[i]!));
          const expected = await oracle.applyEvents(valid, run);
          expect(outcomes.filter((o) => typeof o !== 'string')).toHaveLength(batch.length - valid.length);
          expect(outcomes.filter((o) => typeof o === 'string')).toEqual(expected.outcomes);
          for (const p of [0, 1, 2].map((n) => `${tag}p${n}`)) {
            const images = (await store.images(p)).sort((a, b) => (a.imageId < b.imageId ? -1 : 1));
            expect(images).toEqual((await oracle.images(p)).sort((a, b) => (a.imageId < b.imageId ? -1 : 1)));
            expect(await store.usage(p)).toEqual(usageOf(images));
          }
        }),
        { numRuns: 25 },
      );
    }, 60_000);

    it('through the pipeline: the refused message is invalid with its reason, the rest applied', async () => {
      const bodies = quotaTestBodies();
      const project = inner(bodies[0]!).payload.owner as string;
      // The project is one byte short of what the ledger can total, so one more image tips it over.
      await store.applyEvents([ev({ imageId: 'huge', projectId: project, status: 'active', size: Number.MAX_SAFE_INTEGER - 1 })], 1);
      const first = inner(bodies[0]!);
      const tipping = envelope({ ...first, message_id: 'tipping', payload: { ...first.payload, status: 'active', size: 5 } });
      const pipeline = pipelineOf({ store, limits: { limitsFor: async () => ({}) } });
      const { outcomes } = await pipeline.ingest([...bodies.slice(1), tipping]);
      expect(outcomes.slice(0, -1).map((o) => o.result)).toEqual(bodies.slice(1).map(() => 'applied'));
      expect(outcomes.at(-1)).toEqual({ result: 'invalid', reason: expect.stringMatching(/ledger store refused it: .*2\^53/) });
    });

    it("keeps the enforcer's own small values, such as where the scheduled reconcile stopped", async () => {
      expect(await store.getState('reconcile.cursor')).toBeUndefined();
      await store.setState('reconcile.cursor', '615696c542784834ac46630e5a22dbe3');
      await store.setState('other', '');
      expect(await store.getState('reconcile.cursor')).toBe('615696c542784834ac46630e5a22dbe3');
      // The next run moves it on; an empty value is a value, not an absence.
      await store.setState('reconcile.cursor', 'zz-last-project');
      expect(await store.getState('reconcile.cursor')).toBe('zz-last-project');
      expect(await store.getState('other')).toBe('');
      // Kept apart from the ledger: no project, no image, no usage.
      expect(await store.projects()).toEqual([]);
    });

    it("reads the rate rule's window only: records created at or after the time, tombstones included", async () => {
      await store.applyEvents(
        [
          ev({ imageId: 'ancient', status: 'active', size: MiB, createdAt: 10 }),
          ev({ imageId: 'edge', status: 'queued', createdAt: 100 }),
          ev({ imageId: 'in-tomb', status: 'deleted', deleted: true, createdAt: 150 }),
          ev({ imageId: 'in', status: 'queued', createdAt: 200 }),
          ev({ imageId: 'elsewhere', projectId: 'p2', status: 'queued', createdAt: 200 }),
        ],
        1,
      );
      const ids = async (project: string, since: number) => (await store.imagesCreatedSince(project, since)).map((r) => r.imageId).sort();
      expect(await ids('p1', 100)).toEqual(['edge', 'in', 'in-tomb']);
      expect(await ids('p1', 101)).toEqual(['in', 'in-tomb']);
      expect(await ids('p1', 201)).toEqual([]);
      expect(await ids('nobody', 0)).toEqual([]);
      // An owner change moves the image into the new owner's window.
      await store.applyEvents([ev({ imageId: 'in', projectId: 'p2', status: 'queued', createdAt: 200, updatedAt: 2_000 })], 2);
      expect(await ids('p1', 100)).toEqual(['edge', 'in-tomb']);
      expect(await ids('p2', 100)).toEqual(['elsewhere', 'in']);
      expect((await store.imagesCreatedSince('p2', 0)).find((r) => r.imageId === 'in')).toMatchObject({ projectId: 'p2', status: 'queued', createdAt: 200 });
    });

    it('walks the live projects page by page, in order, without holding them all', async () => {
      const projects = Array.from({ length: 25 }, (_, n) => `p-${String(n).padStart(2, '0')}`);
      await store.applyEvents(
        [
          ...projects.map((projectId, n) => ev({ imageId: `i-${n}`, projectId })),
          ev({ imageId: 'dead', projectId: 'p-dead', status: 'deleted', deleted: true }),
        ],
        1,
      );
      const walked: string[][] = [];
      for (let page = await store.projects({ after: '', limit: 10 }); page.length > 0; page = await store.projects({ after: page.at(-1)!, limit: 10 }))
        walked.push(page);
      expect(walked.map((p) => p.length)).toEqual([10, 10, 5]);
      expect(walked.flat()).toEqual(projects);
      expect(await store.projects({ after: 'p-04', limit: 2 })).toEqual(['p-05', 'p-06']);
      expect(await store.projects({ after: 'p-24', limit: 10 })).toEqual([]);
      expect(await store.projects()).toEqual(projects);
    });

    it('reads records by id, any project, tombstones included; unknown ids left out', async () => {
      await store.applyEvents(
        [
          ev({ imageId: 'a', projectId: 'p1', status: 'queued', createdAt: 5 }),
          ev({ imageId: 'b', projectId: 'p2', status: 'active', size: MiB }),
          ev({ imageId: 't', projectId: 'p1', status: 'deleted', deleted: true }),
        ],
        1,
      );
      const got = (await store.recordsOf(['t', 'nope', 'b', 'a', 'a'])).sort((x, y) => (x.imageId < y.imageId ? -1 : 1));
      expect(got.map((r) => [r.imageId, r.projectId, r.status, r.deleted])).toEqual([
        ['a', 'p1', 'queued', false],
        ['b', 'p2', 'active', false],
        ['t', 'p1', 'deleted', true],
      ]);
      expect(got[0]).toMatchObject({ createdAt: 5, size: null, protected: false, importing: '' });
      expect(await store.recordsOf([])).toEqual([]);
    });

    it('sweeps what a pass did not mark: live records only, every project, each once, page by page', async () => {
      const live = Array.from({ length: 23 }, (_, n) =>
        ev({ imageId: `img-${String(n).padStart(2, '0')}`, projectId: `p${n % 3}`, status: n % 2 ? 'active' : 'queued', size: n % 2 ? MiB : null }),
      );
      await store.applyEvents(
        [
          ...live,
          ev({ imageId: 'dead-tomb', status: 'deleted', deleted: true }),
          ev({ imageId: 'dead-killed', status: 'killed' }),
          ev({ imageId: 'dead-pending', status: 'pending_delete' }),
        ],
        1,
      );
      const sweep = async (pass: string, limit: number) => {
        const seen: string[] = [];
        let cursor = '';
        let pages = 0;
        do {
          const page = await store.unmarkedLive(pass, cursor, limit);
          expect(page.records.length).toBeLessThanOrEqual(limit);
          seen.push(...page.records.map((r) => r.imageId));
          cursor = page.cursor;
          pages++;
        } while (cursor !== '' && pages < 100);
        return seen.sort();
      };
      const ids = live.map((e) => e.imageId);
      expect(await sweep('pass-1', 5)).toEqual(ids);
      // Marked by pass-1 (and an id the ledger does not hold, ignored): the rest is what pass-1 missed.
      // The mark returns the records it marked, as recordsOf reads them.
      const marked = await store.markListed([...ids.slice(0, 20), 'never-heard-of'], 'pass-1');
      const byId = (rs: ImageRecord[]) => [...rs].sort((x, y) => (x.imageId < y.imageId ? -1 : 1));
      expect(byId(marked)).toEqual(byId(await store.recordsOf(ids.slice(0, 20))));
      expect(marked).toHaveLength(20);
      expect(await store.markListed([], 'pass-1')).toEqual([]);
      expect(await sweep('pass-1', 2)).toEqual(ids.slice(20));
      expect(await sweep('pass-1', 1000)).toEqual(ids.slice(20));
      // A later pass's mark replaces an earlier one: to pass-2 every record is unmarked again.
      expect(await sweep('pass-2', 7)).toEqual(ids);
      expect(await store.recordsOf(['never-heard-of'])).toEqual([]);
    });

    it.each([1, 63, 64, 65, 200])('writes a batch of %i images exactly, new and held, over as many projects: records, marks and totals', async (n) => {
      const id = (i: number) => `img-${i}`;
      // Half the images held already, in other projects than the batch gives them (an owner change).
      const held = Array.from({ length: Math.ceil(n / 2) }, (_, i) => ev({ imageId: id(i), projectId: `q${i}`, status: 'active', size: i + 1, updatedAt: 10 }));
      await store.applyEvents(held, 1);
      const batch = Array.from({ length: n }, (_, i) =>
        ev({
          imageId: id(i),
          projectId: `p${i}`,
          status: i % 3 === 0 ? 'queued' : 'saving',
          size: i % 3 === 0 ? null : 2 * i + 1,
          createdAt: i,
          updatedAt: 20 + i,
        }),
      );
      const result = await store.applyEvents(batch, 2, { overwrite: true, listedBy: 'pass-1' });
      expect(result.outcomes).toEqual(batch.map(() => 'applied'));
      const want = batch.map(({ eventType: _, ...record }) => record);
      expect((await store.recordsOf(batch.map((e) => e.imageId))).sort((a, b) => a.imageId.localeCompare(b.imageId))).toEqual(
        want.sort((a, b) => a.imageId.localeCompare(b.imageId)),
      );
      expect((await store.unmarkedLive('pass-1', '', n + 10)).records).toEqual([]);
      const projects = [...batch.map((e) => e.projectId), ...held.map((e) => e.projectId)];
      for (const p of projects) expect(await store.usage(p), p).toEqual(usageOf(await store.images(p)));
      for (const [p, totals] of result.totals ?? []) expect(usageFromTotals(totals), p).toEqual(await store.usage(p));
      expect(await store.projects()).toEqual(batch.map((e) => e.projectId).sort());
    });

    it("marks what a batch writes with the pass it is given (listedBy), and keeps other records' marks", async () => {
      await store.applyEvents([ev({ imageId: 'a', status: 'queued', updatedAt: 100 }), ev({ imageId: 'b', status: 'queued', updatedAt: 100 })], 1);
      await store.markListed(['b'], 'pass-1');
      // Glance's word over 'a' and a new 'c', both listed by pass-1; 'b' written after, with no pass.
      await store.applyEvents([ev({ imageId: 'a', status: 'active', size: MiB, updatedAt: 200 }), ev({ imageId: 'c', status: 'queued', updatedAt: 200 })], 2, {
        overwrite: true,
        listedBy: 'pass-1',
      });
      await store.applyEvents([ev({ imageId: 'b', status: 'saving', updatedAt: 200 })], 2, { overwrite: true });
      expect((await store.unmarkedLive('pass-1', '', 10)).records).toEqual([]);
      expect((await store.unmarkedLive('pass-2', '', 10)).records.map((r) => r.imageId)).toEqual(['a', 'b', 'c']);
      expect((await store.recordsOf(['a']))[0]).toMatchObject({ status: 'active', updatedAt: 200 });
      // A later pass's write replaces the mark.
      await store.applyEvents([ev({ imageId: 'c', status: 'queued', updatedAt: 300 })], 3, { overwrite: true, listedBy: 'pass-2' });
      expect((await store.unmarkedLive('pass-1', '', 10)).records.map((r) => r.imageId)).toEqual(['c']);
    });

    it('keeps a mark through later notifications, and drops nothing else with it', async () => {
      await store.applyEvents([ev({ imageId: 'a', status: 'queued', updatedAt: 100 }), ev({ imageId: 'b', status: 'queued', updatedAt: 100 })], 1);
      await store.markListed(['a', 'b'], 'pass-1');
      // A newer notification merges into 'a'; Glance's own word overwrites 'b'.
      await store.applyEvents([ev({ imageId: 'a', status: 'saving', updatedAt: 200 })], 2);
      await store.applyEvents([ev({ imageId: 'b', status: 'active', size: MiB, updatedAt: 200 })], 2, { overwrite: true });
      expect((await store.unmarkedLive('pass-1', '', 10)).records).toEqual([]);
      expect((await store.recordsOf(['a']))[0]).toMatchObject({ status: 'saving', updatedAt: 200 });
      // A tombstone is not live: the sweep never returns it, marked or not.
      await store.applyEvents([ev({ imageId: 'a', status: 'deleted', deleted: true, updatedAt: 300 })], 3);
      expect((await store.unmarkedLive('pass-2', '', 10)).records.map((r) => r.imageId)).toEqual(['b']);
    });

    describe('leases: one holder at a time decides a project', () => {
      const LEASE = 'project:615696c542784834ac46630e5a22dbe3';

      it('grants a free lease, and refuses a second holder while it runs', async () => {
        expect(await store.acquireLease(LEASE, 'replica-a:1', 30_000, NOW)).toBe(true);
        expect(await store.acquireLease(LEASE, 'replica-b:1', 30_000, NOW + 1)).toBe(false);
        expect(await store.acquireLease(LEASE, 'replica-b:1', 30_000, NOW + 29_999)).toBe(false);
        // Another name is another lease.
        expect(await store.acquireLease('project:other', 'replica-b:1', 30_000, NOW + 1)).toBe(true);
      });

      it('grants it to another holder once it has expired', async () => {
        expect(await store.acquireLease(LEASE, 'replica-a:1', 1_000, NOW)).toBe(true);
        expect(await store.acquireLease(LEASE, 'replica-b:1', 30_000, NOW + 1_000)).toBe(true);
        // Now b's: a, whose lease ran out, is refused in turn.
        expect(await store.acquireLease(LEASE, 'replica-a:1', 30_000, NOW + 1_001)).toBe(false);
      });

      it('extends the lease of the holder that has it, from now', async () => {
        expect(await store.acquireLease(LEASE, 'replica-a:1', 10_000, NOW)).toBe(true);
        expect(await store.acquireLease(LEASE, 'replica-a:1', 10_000, NOW + 8_000)).toBe(true);
        // Past the first term, within the second: still a's.
        expect(await store.acquireLease(LEASE, 'replica-b:1', 10_000, NOW + 12_000)).toBe(false);
        expect(await store.acquireLease(LEASE, 'replica-b:1', 10_000, NOW + 18_000)).toBe(true);
      });

      it('is released by its holder only', async () => {
        expect(await store.acquireLease(LEASE, 'replica-a:1', 30_000, NOW)).toBe(true);
        await store.releaseLease(LEASE, 'replica-b:1');
        expect(await store.acquireLease(LEASE, 'replica-b:1', 30_000, NOW + 1)).toBe(false);
        await store.releaseLease(LEASE, 'replica-a:1');
        expect(await store.acquireLease(LEASE, 'replica-b:1', 30_000, NOW + 2)).toBe(true);
        // a's release comes late (b has it now): b's lease is left alone.
        await store.releaseLease(LEASE, 'replica-a:1');
        expect(await store.acquireLease(LEASE, 'replica-a:1', 30_000, NOW + 3)).toBe(false);
        // Releasing what nobody holds is no error.
        await store.releaseLease('project:never', 'replica-a:1');
      });

      it('says until when a lease runs, as its holder last took, kept or extended it; nothing once released', async () => {
        expect(await store.leaseUntil(LEASE)).toBeUndefined();
        expect(await store.acquireLease(LEASE, 'replica-a:1', 30_000, NOW)).toBe(true);
        expect(await store.leaseUntil(LEASE)).toBe(NOW + 30_000);
        // Refused to b: unchanged. Kept by a for less (a decision's interval): shortened.
        expect(await store.acquireLease(LEASE, 'replica-b:1', 30_000, NOW + 1)).toBe(false);
        expect(await store.leaseUntil(LEASE)).toBe(NOW + 30_000);
        expect(await store.acquireLease(LEASE, 'replica-a:1', 4_000, NOW + 1_000)).toBe(true);
        expect(await store.leaseUntil(LEASE)).toBe(NOW + 5_000);
        expect(await store.leaseUntil('project:other')).toBeUndefined();
        await store.releaseLease(LEASE, 'replica-a:1');
        expect(await store.leaseUntil(LEASE)).toBeUndefined();
      });

      it('grants exactly one of 20 holders asking at once', async () => {
        const granted = await Promise.all(Array.from({ length: 20 }, (_, i) => store.acquireLease(LEASE, `replica-${i}:1`, 30_000, NOW)));
        expect(granted.filter(Boolean)).toHaveLength(1);
      });

      it('keeps leases apart from the ledger: no project, no state', async () => {
        await store.acquireLease(LEASE, 'replica-a:1', 30_000, NOW);
        expect(await store.projects()).toEqual([]);
        expect(await store.getState(LEASE)).toBeUndefined();
      });
    });
  });
}
