import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { pipelineOf } from '../../src/composition-root.js';
import type { GlanceImage, OwnedImage } from '../../src/ledger/glance-image.js';
import { repairFromListing } from '../../src/ledger/repair.js';
import type { ImageEvent } from '../../src/notification/parse.js';
import type { ProjectLimits } from '../../src/quota/limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import { MemoryGlance } from '../functions/support.js';
import { ev } from '../support/events.js';

/*
 * The trust model: the bus is a trigger and an estimate, Glance's API is the truth. Whatever the
 * notifications say (forged creates, forged deletes from the future, lost deletes), an image is
 * deleted only when Glance's own listing of its project puts it past the quota.
 */

const P = 'victim';
const NOW_MS = Date.UTC(2026, 11, 1, 12, 0, 0);
const NOW = NOW_MS / 1000;
const iso = (seconds: number) => new Date(seconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
const limitsOf = (l: ProjectLimits) => ({ limitsFor: async () => l });

function image(id: string, createdAt: number, extra: Partial<GlanceImage> = {}): OwnedImage {
  return {
    id,
    owner: P,
    status: 'queued',
    protected: false,
    size: null,
    created_at: iso(createdAt),
    updated_at: iso(createdAt),
    visibility: 'private',
    ...extra,
  } as OwnedImage;
}

/** What the notification of a Glance image would say (a true create). */
function trueCreate(i: GlanceImage): ImageEvent {
  const created = Date.parse(i.created_at) / 1000;
  return ev({
    imageId: i.id,
    projectId: i.owner!,
    status: i.status,
    createdAt: created,
    updatedAt: created,
    protected: i.protected,
    eventType: 'image.create',
  });
}

function pipelineOver(glance: MemoryGlance, limits: ProjectLimits, mode: 'enforce' | 'dry-run' = 'enforce') {
  const store = new MemoryStore();
  const time = { nowMs: NOW_MS };
  // Enforced as each message comes, as if minutes apart: no interval between listings here.
  const pipeline = pipelineOf({ store, limits: limitsOf(limits), images: glance, mode, clock: () => time.nowMs, concurrency: 4, enforceIntervalMs: 0 });
  return { store, pipeline, time };
}

describe("repairing the ledger from Glance's listing", () => {
  const view = { listedAtMs: NOW_MS, nowMs: NOW_MS + 2_000, skewMs: 300_000 };

  it('brings back what forged deletes tombstoned, and tombstones what forged creates invented', () => {
    const real = [image('r1', NOW - 3_000), image('r2', NOW - 2_000)];
    const ledger = [
      { ...trueCreate(real[0]!), deleted: true, status: 'deleted', updatedAt: 4_070_908_800 }, // "deleted in 2099"
      { ...trueCreate(real[1]!), status: 'active', updatedAt: 8_000_000_000 }, // "active in 9999"
      trueCreate(image('ghost', NOW - 1_000)),
    ];
    const { events, corrections } = repairFromListing(P, ledger, real, view);
    expect(corrections).toEqual([
      { kind: 'resurrected', imageId: 'r1', projectId: P },
      { kind: 'changed', imageId: 'r2', projectId: P },
      { kind: 'vanished', imageId: 'ghost', projectId: P },
    ]);
    expect(events.map((e) => [e.imageId, e.status, e.deleted])).toEqual([
      ['r1', 'queued', false],
      ['r2', 'queued', false],
      ['ghost', 'deleted', true],
    ]);
  });

  it('spares what the bus changed after the listing began, and what was created since', () => {
    const listed = [image('r1', NOW - 3_000)];
    const ledger = [
      // A real delete that arrived while the listing was being read: newer than the listing.
      { ...trueCreate(listed[0]!), deleted: true, status: 'deleted', updatedAt: NOW + 1 },
      // Created after the listing began: absent from it for good reason.
      trueCreate(image('new', NOW + 1)),
    ];
    expect(repairFromListing(P, ledger, listed, view)).toEqual({ events: [], corrections: [] });
  });

  it('adds what the bus lost, leaves images listed under another owner to that owner, and is quiet when all agree', () => {
    const listed = [image('lost', NOW - 100)];
    const moved = trueCreate(image('moved', NOW - 5_000));
    expect(repairFromListing(P, [moved], listed, { ...view, listedElsewhere: new Set(['moved']) }).corrections).toEqual([
      { kind: 'missing', imageId: 'lost', projectId: P },
    ]);
    expect(repairFromListing(P, [trueCreate(listed[0]!)], listed, view)).toEqual({ events: [], corrections: [] });
  });

  it("writes a flood's images the listing shows before their notifications, without calling it a correction", () => {
    const listed = [image('just-made', NOW - 2), image('long-lost', NOW - 600)];
    const { events, corrections } = repairFromListing(P, [], listed, view);
    expect(events.map((e) => e.imageId)).toEqual(['just-made', 'long-lost']);
    expect(corrections).toEqual([{ kind: 'missing', imageId: 'long-lost', projectId: P }]);
  });
});

describe('enforcement is decided on Glance, never on the bus alone', () => {
  it('reads the limits afresh before it deletes: a limit raised a moment ago counts', async () => {
    const glance = new MemoryGlance().add(...Array.from({ length: 5 }, (_, i) => image(`i${i}`, NOW - 100 + i)));
    const store = new MemoryStore();
    await store.applyEvents([...glance.images.values()].map(trueCreate), NOW_MS);
    // The table says 2 (stale); Keystone says 5 now.
    const limits = { limitsFor: async () => ({ image_count_total: 2 }), confirm: async () => ({ trusted: true as const, limits: { image_count_total: 5 } }) };
    const report = await pipelineOf({ store, limits, images: glance, clock: () => NOW_MS }).enforce(P);
    expect(report).toMatchObject({ basis: 'glance', over: [], limits: { image_count_total: 5 } });
    expect(glance.deleted).toEqual([]);
  });

  it('tries every candidate even when one delete fails, then reports the failure', async () => {
    const glance = new MemoryGlance().add(...Array.from({ length: 6 }, (_, i) => image(`i${i}`, NOW - 100 + i)));
    const { store, pipeline } = pipelineOver(glance, { image_count_total: 1 });
    await store.applyEvents([...glance.images.values()].map(trueCreate), NOW_MS);
    const flaky = glance.deleteImage.bind(glance);
    glance.deleteImage = async (id) => {
      if (id === 'i5') throw new Error('Glance answered 503');
      return flaky(id);
    };
    await expect(pipeline.enforce(P)).rejects.toThrow(/503/);
    expect(glance.deleted.sort()).toEqual(['i1', 'i2', 'i3', 'i4']);
  });

  it('forged creates for a project at its limit delete nothing, and the forged records are corrected', async () => {
    const real = [image('r1', NOW - 300), image('r2', NOW - 200), image('r3', NOW - 100)];
    const glance = new MemoryGlance().add(...real);
    const { store, pipeline } = pipelineOver(glance, { image_count_total: 3 });
    await store.applyEvents(real.map(trueCreate), NOW_MS);
    // Ten forged creates, dated in 2024: the ledger says 13 against 3.
    const forged = Array.from({ length: 10 }, (_, i) => ev({ imageId: `forged-${i}`, projectId: P, createdAt: 1_717_200_000 + i, eventType: 'image.create' }));
    await store.applyEvents(forged, NOW_MS);
    expect((await store.usage(P)).image_count_total).toBe(13);
    const corrections: string[] = [];
    const withHook = pipelineOf({
      store,
      limits: limitsOf({ image_count_total: 3 }),
      images: glance,
      clock: () => NOW_MS,
      onCorrections: (_p, c) => corrections.push(...c.map((x) => x.kind)),
    });
    const report = await withHook.enforce(P);
    expect(report).toMatchObject({ basis: 'glance', over: [], actions: [], usage: { image_count_total: 3 } });
    expect(glance.deleted).toEqual([]);
    expect(corrections).toEqual(Array(10).fill('vanished'));
    // The ledger now says what Glance says: the next message costs no Glance call.
    expect((await store.usage(P)).image_count_total).toBe(3);
    glance.calls.length = 0;
    expect((await pipeline.enforce(P)).basis).toBe('ledger');
    expect(glance.calls).toEqual([]);
  });

  it('forged deletes cannot hide images: the listing counts them, and the newest queued go', async () => {
    const real = [image('r1', NOW - 400), image('r2', NOW - 300), image('r3', NOW - 200)];
    const glance = new MemoryGlance().add(...real);
    const { store, pipeline } = pipelineOver(glance, { image_count_total: 3 });
    await store.applyEvents(real.map(trueCreate), NOW_MS);
    await store.applyEvents(
      real.map((i) => ev({ imageId: i.id, projectId: P, status: 'deleted', deleted: true, updatedAt: 4_070_908_800, eventType: 'image.delete' })),
      NOW_MS,
    );
    expect((await store.usage(P)).image_count_total).toBe(0);
    const more = [image('n1', NOW - 40), image('n2', NOW - 30), image('n3', NOW - 20), image('n4', NOW - 10)];
    glance.add(...more);
    await store.applyEvents(more.map(trueCreate), NOW_MS);
    const report = await pipeline.enforce(P);
    expect(report.basis).toBe('glance');
    expect(glance.deleted.sort()).toEqual(['n1', 'n2', 'n3', 'n4']);
    expect([...glance.images.keys()].sort()).toEqual(['r1', 'r2', 'r3']);
    expect((await store.usage(P)).image_count_total).toBe(3);
  });

  it('a protected queued image past the limit goes in its own place, unprotected first; the older images stay', async () => {
    const glance = new MemoryGlance().add(image('old', NOW - 300), image('mid', NOW - 200), image('locked', NOW - 100, { protected: true }));
    const { store, pipeline } = pipelineOver(glance, { image_count_total: 1 });
    await store.applyEvents([...glance.images.values()].map(trueCreate), NOW_MS);
    const report = await pipeline.enforce(P);
    expect(glance.deleted.sort()).toEqual(['locked', 'mid']);
    expect([...glance.images.keys()]).toEqual(['old']);
    expect(glance.calls.filter((c) => c.startsWith('UNPROTECT'))).toEqual(['UNPROTECT locked']);
    expect(report.actions.find((a) => a.imageId === 'locked')).toMatchObject({
      action: 'deleted',
      reason: expect.stringMatching(/protected flag was cleared first/),
    });
  });

  it('with PROTECTED_QUEUED_IMAGES=report, a protected image past the limit is kept and audited once, and still no other image goes in its place', async () => {
    const glance = new MemoryGlance().add(image('old', NOW - 300), image('mid', NOW - 200), image('locked', NOW - 100, { protected: true }));
    const store = new MemoryStore();
    const pipeline = pipelineOf({
      store,
      limits: limitsOf({ image_count_total: 1 }),
      images: glance,
      protectedPolicy: 'report',
      clock: () => NOW_MS,
      enforceIntervalMs: 0,
    });
    await store.applyEvents([...glance.images.values()].map(trueCreate), NOW_MS);
    for (let i = 0; i < 5; i++) await pipeline.enforceOnGlance(P);
    expect(glance.deleted).toEqual(['mid']);
    expect([...glance.images.keys()].sort()).toEqual(['locked', 'old']);
    expect((await store.actions()).map((a) => `${a.imageId}:${a.action}`)).toEqual(['locked:protected', 'mid:deleted']);
    expect(glance.calls.filter((c) => c.startsWith('UNPROTECT') || c.startsWith('DELETE locked'))).toEqual([]);
  });

  it('200 protected creates against 5: enforced as they arrive, each image is audited once (no audit per listing per image)', async () => {
    const glance = new MemoryGlance();
    const store = new MemoryStore();
    const pipeline = pipelineOf({
      store,
      limits: limitsOf({ image_count_total: 5 }),
      images: glance,
      protectedPolicy: 'report',
      clock: () => NOW_MS,
      enforceIntervalMs: 0,
    });
    for (let i = 0; i < 200; i++) {
      const img = image(`p${String(i).padStart(3, '0')}`, NOW - 1_000 + i, { protected: true });
      glance.add(img);
      await store.applyEvents([trueCreate(img)], NOW_MS);
      await pipeline.enforce(P);
    }
    const audit = await store.actions();
    expect(audit).toHaveLength(195);
    expect(new Set(audit.map((a) => a.imageId)).size).toBe(195);
    expect(audit.every((a) => a.action === 'protected')).toBe(true);
  });

  it('reads each candidate back from Glance before acting: an image that went active after the listing survives', async () => {
    const glance = new MemoryGlance().add(image('a', NOW - 300), image('b', NOW - 200), image('c', NOW - 100));
    const { store, pipeline } = pipelineOver(glance, { image_count_total: 1 });
    await store.applyEvents([...glance.images.values()].map(trueCreate), NOW_MS);
    // Its owner uploads 1 GiB into 'c' between the listing and the act.
    glance.onGet = (id) => {
      if (id === 'c') Object.assign(glance.images.get('c')!, { status: 'active', size: 1 << 30 });
    };
    const report = await pipeline.enforce(P);
    expect(glance.deleted).toEqual(['b']);
    expect(glance.images.get('c')).toMatchObject({ status: 'active' });
    expect(report.actions.find((a) => a.imageId === 'c')).toMatchObject({
      action: 'skipped',
      reason: expect.stringMatching(/no longer queued.*Glance said: active/),
    });
  });

  it('a limits outage deletes nothing: limits not from the configured source are reported, never acted on', async () => {
    const glance = new MemoryGlance().add(...Array.from({ length: 60 }, (_, i) => image(`i${i}`, NOW - 1_000 + i)));
    const store = new MemoryStore();
    await store.applyEvents([...glance.images.values()].map(trueCreate), NOW_MS);
    // Keystone says 100; it cannot be read, and the static fallback in hand says 5.
    const limits = {
      limitsFor: async () => ({ image_count_total: 5 }),
      confirm: async () => ({ trusted: false as const, limits: { image_count_total: 5 }, reason: 'Keystone unreachable' }),
    };
    const pipeline = pipelineOf({ store, limits, images: glance, clock: () => NOW_MS });
    await expect(pipeline.enforce(P)).rejects.toMatchObject({ code: 'LIMITS_UNAVAILABLE', message: expect.stringMatching(/Keystone unreachable/) });
    expect(glance.deleted).toEqual([]);
    expect(glance.calls.filter((c) => !c.startsWith('LIST'))).toEqual([]);
    expect(await store.actions()).toEqual([]);
  });

  it('an image listed twice (its os_hidden flipped between the two passes) counts once', async () => {
    const glance = new MemoryGlance().add(image('a', NOW - 300), image('b', NOW - 200), image('c', NOW - 100));
    const listOnce = glance.listImages.bind(glance);
    glance.listImages = async function* (query) {
      yield* listOnce(query);
      yield { ...glance.images.get('b')!, os_hidden: true };
    };
    const { store, pipeline } = pipelineOver(glance, { image_count_total: 3 });
    await store.applyEvents([...glance.images.values()].map(trueCreate), NOW_MS);
    const report = await pipeline.enforceOnGlance(P);
    expect(report.usage.image_count_total).toBe(3);
    expect(glance.deleted).toEqual([]);
  });

  it('an old burst is not a rate violation: 5 queued images from a year ago stay while the project holds 25 of its 1,000', async () => {
    const year = 365 * 24 * 3600;
    const old = Array.from({ length: 5 }, (_, i) => image(`old${i}`, NOW - year + i));
    const steady = Array.from({ length: 20 }, (_, i) => image(`s${String(i).padStart(2, '0')}`, NOW - 20 * 3600 + i * 3600, { status: 'active' }));
    const glance = new MemoryGlance().add(...old, ...steady);
    const { store, pipeline } = pipelineOver(glance, { image_count_total: 1_000, image_create_rate: { count: 3, windowSeconds: 60 } });
    await store.applyEvents([...glance.images.values()].map(trueCreate), NOW_MS);
    const report = await pipeline.enforceOnGlance(P);
    expect(report.over).toEqual([]);
    expect(glance.deleted).toEqual([]);
  });

  it('a forged create/delete churn trips the rate in the ledger but costs no real image', async () => {
    // Glance: three real queued images an hour apart. Bus: 50 forged images in one minute, each
    // created and deleted, plus a forged create for a real id dated now.
    const real = [image('r1', NOW - 7_200), image('r2', NOW - 3_600), image('r3', NOW - 60)];
    const glance = new MemoryGlance().add(...real);
    const { store, pipeline } = pipelineOver(glance, { image_count_total: 10, image_create_rate: { count: 5, windowSeconds: 60 } });
    await store.applyEvents(real.map(trueCreate), NOW_MS);
    const churn = Array.from({ length: 50 }, (_, i) => [
      ev({ imageId: `f-${i}`, projectId: P, createdAt: NOW - 50 + i, eventType: 'image.create' }),
      ...(i < 45 ? [ev({ imageId: `f-${i}`, projectId: P, createdAt: NOW - 50 + i, updatedAt: NOW - 49 + i, status: 'deleted', deleted: true })] : []),
    ]).flat();
    await store.applyEvents(churn, NOW_MS);
    expect((await pipeline.evaluate(P)).over).toContain('image_create_rate');
    const report = await pipeline.enforce(P);
    expect(report.basis).toBe('glance');
    expect(report.over).toEqual([]);
    expect(glance.deleted).toEqual([]);
  });

  it('a real burst past the create rate, confirmed by the listing, loses its newest queued images', async () => {
    const burst = Array.from({ length: 8 }, (_, i) => image(`b${i}`, NOW - 30 + i));
    const glance = new MemoryGlance().add(...burst);
    const { store, pipeline } = pipelineOver(glance, { image_create_rate: { count: 5, windowSeconds: 60 } });
    await store.applyEvents(burst.map(trueCreate), NOW_MS);
    await pipeline.enforce(P);
    expect(glance.deleted.sort()).toEqual(['b5', 'b6', 'b7']);
  });

  it('property: whatever the bus says, nothing Glance would keep is deleted, and never more than the excess', async () => {
    const arbitraryCase = fc.record({
      limit: fc.integer({ min: 0, max: 6 }),
      real: fc.array(
        fc.record({ age: fc.integer({ min: 1, max: 10_000 }), status: fc.constantFrom('queued', 'queued', 'active', 'saving'), protected: fc.boolean() }),
        { maxLength: 10 },
      ),
      // Each real image's create is delivered, lost, or delivered with a forged delete after it.
      fate: fc.array(fc.constantFrom('delivered', 'lost', 'forged-delete', 'forged-delete-future'), { minLength: 10, maxLength: 10 }),
      forgedCreates: fc.array(fc.record({ age: fc.integer({ min: -200, max: 10_000 }), future: fc.boolean() }), { maxLength: 12 }),
      batches: fc.integer({ min: 1, max: 4 }),
      seed: fc.integer(),
    });
    await fc.assert(
      fc.asyncProperty(arbitraryCase, async (c) => {
        const real = c.real.map((r, i) => image(`r${i}`, NOW - r.age, { status: r.status, protected: r.protected }));
        const glance = new MemoryGlance().add(...real);
        // What Glance's own rule keeps and removes, computed here from the truth alone.
        const excess = Math.max(0, real.length - c.limit);
        // Protected or not: a protected queued image goes in its own place (PROTECTED_QUEUED_IMAGES=unprotect).
        const deletable = real
          .filter((r) => r.status === 'queued')
          .sort((a, b) => (a.created_at === b.created_at ? (a.id < b.id ? 1 : -1) : a.created_at < b.created_at ? 1 : -1));
        const mayGo = new Set(deletable.slice(0, excess).map((r) => r.id));

        const events: ImageEvent[] = [];
        real.forEach((r, i) => {
          const fate = c.fate[i]!;
          if (fate !== 'lost') events.push(trueCreate(r));
          if (fate.startsWith('forged-delete'))
            events.push(ev({ imageId: r.id, projectId: P, status: 'deleted', deleted: true, updatedAt: fate.endsWith('future') ? 4_070_908_800 : NOW - 1 }));
        });
        c.forgedCreates.forEach((f, i) => {
          events.push(ev({ imageId: `forged-${i}`, projectId: P, createdAt: f.future ? 8_000_000_000 : NOW - f.age, eventType: 'image.create' }));
        });
        // A shuffled arrival, cut into batches, each followed by the door's enforcement.
        const order = fc.sample(fc.shuffledSubarray(events, { minLength: events.length, maxLength: events.length }), { seed: c.seed, numRuns: 1 })[0]!;
        const { store, pipeline, time } = pipelineOver(glance, { image_count_total: c.limit });
        const size = Math.ceil(order.length / c.batches) || 1;
        for (let i = 0; i < order.length; i += size) {
          await store.applyEvents(order.slice(i, i + size), NOW_MS);
          await pipeline.enforce(P);
          expect(glance.deleted.length).toBeLessThanOrEqual(excess);
          for (const id of glance.deleted) expect(mayGo.has(id)).toBe(true);
        }
        // The next reconcile (ten minutes on, past the clock-skew allowance) ends it: exactly Glance's own rule, and the ledger says
        // what Glance says. (A forged delete dated the very second of a listing is news newer
        // than that listing; the next one judges it.)
        time.nowMs += 600_000;
        const { reconcile } = await import('../../src/doors/reconcile.js');
        await reconcile(pipeline, {});
        expect(new Set(glance.deleted)).toEqual(mayGo);
        expect((await store.usage(P)).image_count_total).toBe(glance.images.size);
      }),
      { numRuns: 300 },
    );
  });
});
