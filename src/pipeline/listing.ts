import type { GlanceImage, OwnedImage } from '../ledger/glance-image.js';
import { countCorrections, repairFromListing, repairListed, sweepUnlisted, type Correction, type CorrectionKind, type Repair } from '../ledger/repair.js';
import type { PipelineContext } from './context.js';

/** Glance's state over the ledger's, outright; the disagreements are counted and logged. */
export async function repair(
  ctx: PipelineContext,
  projectId: string,
  listing: readonly OwnedImage[],
  listedAtMs: number,
  listedElsewhere?: ReadonlySet<string>,
): Promise<Partial<Record<CorrectionKind, number>>> {
  const nowMs = ctx.clock();
  const ledger = await ctx.store.images(projectId);
  // Whatever the repair writes, the estimate's next read of this project is the store's: the
  // totals a batch committed before the listing may predate what the listing showed.
  ctx.committed.forget(projectId);
  return write(
    ctx,
    nowMs,
    repairFromListing(projectId, ledger, listing, { listedAtMs, nowMs, skewMs: ctx.clockSkewMs, ...(listedElsewhere ? { listedElsewhere } : {}) }),
  );
}

/**
 * Reconcile's step for one page of the whole cloud's listing, of any owners: the page's images
 * are marked as listed by the pass and their records read in one call, then Glance's state is
 * written over them (`repairListed`) carrying the same mark, so an image the ledger did not hold
 * is marked as it is written. Memory is the page: nothing is kept for the sweep but the marks in
 * the store. Returns how many of the page's images count against a project (an image with no
 * owner counts against none) and the corrections by kind.
 */
export async function applyListingPage(
  ctx: PipelineContext,
  page: readonly GlanceImage[],
  listedAtMs: number,
  passId: string,
  staged = false,
): Promise<{ listed: number; corrected: Partial<Record<CorrectionKind, number>> }> {
  const owned = page.filter((image): image is OwnedImage => image.owner !== null);
  const nowMs = ctx.clock();
  const view = { listedAtMs, nowMs, skewMs: ctx.clockSkewMs };
  if (staged && ctx.store.bulkListing) {
    // A pass staging its listing (beginListing) holds nothing yet: every image is missing.
    const repair = repairListed([], owned, view);
    await ctx.store.bulkListing.stage(repair.events, passId, listedAtMs);
    return { listed: owned.length, corrected: report(ctx, repair.corrections) };
  }
  const held = await ctx.store.markListed(
    owned.map((image) => image.id),
    passId,
  );
  const corrected = await write(ctx, nowMs, repairListed(held, owned, view), passId);
  return { listed: owned.length, corrected };
}

/**
 * The start of a reconcile pass: whether it stages its listing (`BulkListing`, where the store has
 * it and the ledger holds next to nothing), and any staging an abandoned pass left is dropped.
 */
export async function beginListing(ctx: PipelineContext): Promise<boolean> {
  return (await ctx.store.bulkListing?.begin()) ?? false;
}

/**
 * The end of a staged listing: the staged images become the ledger's records at once. Every
 * project's totals may have moved, so none a batch committed before is taken as usage.
 */
export async function finishListing(ctx: PipelineContext, passId: string): Promise<void> {
  if (!ctx.store.bulkListing) return;
  await ctx.store.bulkListing.finish(passId, ctx.clock(), ctx.clockSkewMs);
  ctx.committed.clear();
}

/**
 * The end of a pass's listing, one page at a time: live records the pass did not mark (of every
 * project, ledger-only ones too: a forged owner's images all go here, in bulk) are tombstoned,
 * but for those made after the pass began. Returns where the next page starts ('' at the end).
 */
export async function sweepPage(
  ctx: PipelineContext,
  passId: string,
  passStartedAtMs: number,
  cursor: string,
  limit: number,
): Promise<{ corrected: Partial<Record<CorrectionKind, number>>; cursor: string }> {
  const page = await ctx.store.unmarkedLive(passId, cursor, limit);
  const nowMs = ctx.clock();
  const corrected = await write(ctx, nowMs, sweepUnlisted(page.records, { listedAtMs: passStartedAtMs, nowMs, skewMs: ctx.clockSkewMs }));
  return { corrected, cursor: page.cursor };
}

/**
 * A repair written over the ledger (Glance's word: `overwrite`), the committed totals of the
 * projects it touched forgotten; its corrections counted, logged once (a project's listing, or a
 * page of the whole cloud's) and handed to the metrics by project. `listedBy`: a pass's page, whose
 * writes carry the pass's mark.
 */
async function write(
  ctx: PipelineContext,
  nowMs: number,
  { events, corrections }: Repair,
  listedBy?: string,
): Promise<Partial<Record<CorrectionKind, number>>> {
  for (const p of new Set(events.map((e) => e.projectId))) ctx.committed.forget(p);
  if (events.length > 0) await ctx.store.applyEvents(events, nowMs, { overwrite: true, ...(listedBy === undefined ? {} : { listedBy }) });
  return report(ctx, corrections);
}

/** Corrections counted, logged once (a project's listing, or a page of the whole cloud's) and handed to the metrics by project. */
function report(ctx: PipelineContext, corrections: readonly Correction[]): Partial<Record<CorrectionKind, number>> {
  const counts = countCorrections(corrections);
  if (corrections.length === 0) return counts;
  const byProject = new Map<string, Correction[]>();
  for (const c of corrections) {
    const theirs = byProject.get(c.projectId);
    if (theirs) theirs.push(c);
    else byProject.set(c.projectId, [c]);
  }
  for (const [projectId, theirs] of byProject) ctx.onCorrections?.(projectId, theirs);
  const sample = corrections.slice(0, 10).map((c) => `${c.kind}:${c.projectId}/${c.imageId}`);
  ctx.log?.warn(
    { projects: [...byProject.keys()].slice(0, 10), corrections: counts, sample },
    "ledger corrected from Glance's listing: notifications were lost or forged (or the ledger is new)",
  );
  return counts;
}
