import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { LedgerStore } from '../../src/store/port.js';
import { ev } from '../support/events.js';

const T = 1_000_000;
const TTL = 30_000;

/**
 * The admission endpoint's reservations, the same in every store (the Redis one is a Lua twin of
 * judgeAdmission). Each adapter's test file calls this with its factory of fresh, empty stores.
 */
export function describeAdmissionStore(name: string, open: () => Promise<LedgerStore>): void {
  describe(`${name}: the admission reservations contract`, () => {
    let store: LedgerStore;
    beforeEach(async () => {
      store = await open();
    });
    afterEach(async () => {
      await store?.close();
    });

    it('admits 60 parallel creates against 0 of 5 exactly 5 times', async () => {
      const outcomes = await Promise.all(Array.from({ length: 60 }, () => store.reserveCreate('p1', { countLimit: 5 }, T, T + TTL)));
      expect(outcomes.filter((o) => o.admitted)).toHaveLength(5);
      const refused = outcomes.filter((o) => !o.admitted);
      expect(refused.every((o) => o.count === 0 && o.reserved === 5)).toBe(true);
    });

    it("counts the project's live images from the ledger, not other projects' reservations", async () => {
      await store.applyEvents([ev({ imageId: 'a', status: 'active' }), ev({ imageId: 'b' }), ev({ imageId: 'c', deleted: true })], T);
      await store.reserveCreate('p2', { countLimit: 1 }, T, T + TTL);
      const first = await store.reserveCreate('p1', { countLimit: 3 }, T, T + TTL);
      expect(first).toEqual({ admitted: true, count: 2, reserved: 0 });
      expect(await store.reserveCreate('p1', { countLimit: 3 }, T, T + TTL)).toEqual({ admitted: false, count: 2, reserved: 1 });
    });

    it('frees the slot of a reservation past its expiry', async () => {
      expect((await store.reserveCreate('p1', { countLimit: 1 }, T, T + 10)).admitted).toBe(true);
      expect((await store.reserveCreate('p1', { countLimit: 1 }, T + 9, T + 9 + TTL)).admitted).toBe(false);
      expect(await store.reserveCreate('p1', { countLimit: 1 }, T + 10, T + 10 + TTL)).toEqual({ admitted: true, count: 0, reserved: 0 });
    });

    it("ends as many of a project's reservations as image.create notifications came in, soonest to expire first", async () => {
      await store.reserveCreate('p1', { countLimit: 3 }, T, T + 100);
      await store.reserveCreate('p1', { countLimit: 3 }, T, T + 200);
      await store.reserveCreate('p1', { countLimit: 3 }, T, T + 300);
      await store.reserveCreate('p2', {}, T, T + 300);
      expect(
        await store.releaseReservations(
          new Map([
            ['p1', 2],
            ['nobody', 4],
          ]),
          T + 1,
        ),
      ).toBe(2);
      // The one left is the latest: at T+250 it is still open, so only one more fits under 2.
      expect(await store.reserveCreate('p1', { countLimit: 2 }, T + 250, T + 250 + TTL)).toEqual({ admitted: true, count: 0, reserved: 1 });
      expect((await store.reserveCreate('p2', { countLimit: 1 }, T + 2, T + TTL)).reserved).toBe(1);
      // More creates than reservations end only those there are.
      expect(await store.releaseReservations(new Map([['p1', 9]]), T + 260)).toBe(2);
      expect((await store.reserveCreate('p1', { countLimit: 1 }, T + 261, T + TTL)).reserved).toBe(0);
    });

    it('holds the create rate: recent creates plus reservations stay under its count', async () => {
      expect((await store.reserveCreate('p1', { rate: { count: 3, recent: 1 } }, T, T + TTL)).admitted).toBe(true);
      expect((await store.reserveCreate('p1', { rate: { count: 3, recent: 1 } }, T, T + TTL)).admitted).toBe(true);
      expect(await store.reserveCreate('p1', { rate: { count: 3, recent: 1 } }, T, T + TTL)).toEqual({ admitted: false, count: 0, reserved: 2 });
      // Under the count limit, over the rate: refused all the same.
      expect((await store.reserveCreate('p1', { countLimit: 100, rate: { count: 3, recent: 1 } }, T, T + TTL)).admitted).toBe(false);
    });

    it('admits without bounds, and a limit of 0 refuses everything', async () => {
      expect((await store.reserveCreate('p1', {}, T, T + TTL)).admitted).toBe(true);
      expect(await store.reserveCreate('p3', { countLimit: 0 }, T, T + TTL)).toEqual({ admitted: false, count: 0, reserved: 0 });
    });
  });
}

/**
 * Several gates over one shared database (`gate` beside each proxy): `openPair` gives two stores
 * on the same data, each with connections of its own.
 */
export function itAdmitsExactlyAcrossGates(what: string, openPair: () => Promise<[LedgerStore, LedgerStore]>): void {
  it(`admits exactly the limit when two gates on separate ${what} take a burst together`, async () => {
    const [a, b] = await openPair();
    try {
      await a.applyEvents([ev({ imageId: 'x1', projectId: 'shared' }), ev({ imageId: 'x2', projectId: 'shared' })], T);
      const outcomes = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).reserveCreate('shared', { countLimit: 7 }, T, T + TTL)));
      expect(outcomes.filter((o) => o.admitted)).toHaveLength(5);
      // One image.create seen by either ends one reservation for both.
      expect(await b.releaseReservations(new Map([['shared', 1]]), T + 1)).toBe(1);
      expect((await a.reserveCreate('shared', { countLimit: 7 }, T + 2, T + TTL)).reserved).toBe(4);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
}
