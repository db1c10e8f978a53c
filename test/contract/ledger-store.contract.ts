import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { usageOf } from '../../src/ledger/usage.js';
import { parseNotification, type ImageEvent } from '../../src/notification/parse.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { snapshot } from './shared-ledger.contract.js';
import { ev, MiB } from '../support/events.js';
import { captures } from '../support/fixtures.js';

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
        .map((c) => parseNotification(c.body, NOW))
        .flatMap((o) => (o.kind === 'image' ? [o.event] : []));
      const result = await store.applyEvents(events, 1);
      expect(result.outcomes.every((o) => o === 'applied')).toBe(true);
      const [project] = await store.projects();
      expect(project).toBe('615696c542784834ac46630e5a22dbe3');
      const images = await store.images(project!);
      // Three images were created in the run and all three were deleted at its end.
      expect(images).toHaveLength(3);
      expect(images.every((r) => r.deleted)).toBe(true);
      expect(await store.usage(project!)).toEqual(usageOf(images));
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
      expect(await store.projects()).toEqual(['p1', 'p2']);
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

    it('lists a project whose only images are tombstoned', async () => {
      await store.applyEvents([ev({ imageId: 'x', projectId: 'gone', status: 'deleted', deleted: true })], 1);
      expect(await store.projects()).toEqual(['gone']);
      expect((await store.images('gone'))[0]).toMatchObject({ imageId: 'x', deleted: true });
    });

    it('keeps the record fields as given', async () => {
      const e = ev({ imageId: 'f', projectId: 'p9', status: 'active', size: 123, createdAt: 50, updatedAt: 60, importing: 'a,b', protected: true });
      await store.applyEvents([e], 1);
      expect(await store.images('p9')).toEqual([
        { imageId: 'f', projectId: 'p9', status: 'active', size: 123, createdAt: 50, updatedAt: 60, timestamp: e.timestamp, messageId: e.messageId, importing: 'a,b', protected: true, deleted: false },
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
      const base = { over: ['image_count_total' as const], usage: { image_count_total: 6, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 }, limits: { image_count_total: 5 } };
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
      expect((await store.actions())[0]).toEqual({ ...base, atMs: 10, projectId: 'p1', imageId: 'a', action: 'would-delete', reason: 'queued, past image_count_total' });
      expect(await store.forgetActionsBefore(12)).toBe(2);
      expect((await store.actions()).map((a) => a.atMs)).toEqual([30]);
      // Forgotten with its record, a would-delete may be recorded again.
      expect(await store.recordActions([{ ...base, atMs: 40, projectId: 'p1', imageId: 'a', action: 'would-delete', reason: 'again' }])).toHaveLength(1);
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
  });
}
