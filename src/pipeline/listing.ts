import type { GlanceImage, OwnedImage } from '../ledger/glance-image.js';
import { countCorrections, repairFromListing, repairListed, sweepUnlisted, type Correction, type CorrectionKind } from '../ledger/repair.js';
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
  const { events, corrections } = repairFromListing(projectId, ledger, listing, {
    listedAtMs,
    nowMs,
    skewMs: ctx.clockSkewMs,
    ...(listedElsewhere ? { listedElsewhere } : {}),
  });
  ctx.committed.forget(projectId);
  if (events.length > 0) await ctx.store.applyEvents(events, nowMs, { overwrite: true });
  const counts = countCorrections(corrections);
  if (corrections.length === 0) return counts;
  const sample = corrections.slice(0, 10).map((c) => `${c.kind}:${c.imageId}`);
  ctx.log?.warn({ projectId, corrections: counts, sample }, "ledger corrected from Glance's listing: notifications for this project were lost or forged");
  ctx.onCorrections?.(projectId, corrections);
  return counts;
}

/** What one page of a whole-cloud listing, or one page of its sweep, did to the ledger. */
export interface PageRepair {
  /** Images of the page that count against a project (an image with no owner counts against none). */
  listed: number;
  corrected: Partial<Record<CorrectionKind, number>>;
  /** The projects whose records the page wrote. */
  projects: Set<string>;
}

/**
 * Reconcile's step for one page of the whole cloud's listing, of any owners: Glance's state
 * written over the records of the page's images (`repairListed`), then the page's images marked
 * as listed by the pass, in that order (a mark lands only on a record the ledger holds). Memory
 * is the page: nothing is kept for the sweep but the marks in the store.
 */
export async function applyListingPage(ctx: PipelineContext, page: readonly GlanceImage[], listedAtMs: number, passId: string): Promise<PageRepair> {
  const owned = page.filter((image): image is OwnedImage => image.owner !== null);
  const ids = owned.map((image) => image.id);
  const nowMs = ctx.clock();
  const { events, corrections } = repairListed(await ctx.store.recordsOf(ids), owned, { listedAtMs, nowMs, skewMs: ctx.clockSkewMs });
  const projects = new Set(events.map((e) => e.projectId));
  for (const p of projects) ctx.committed.forget(p);
  if (events.length > 0) await ctx.store.applyEvents(events, nowMs, { overwrite: true });
  await ctx.store.markListed(ids, passId);
  return { listed: owned.length, corrected: reportCorrections(ctx, corrections), projects };
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
): Promise<PageRepair & { cursor: string }> {
  const page = await ctx.store.unmarkedLive(passId, cursor, limit);
  const nowMs = ctx.clock();
  const { events, corrections } = sweepUnlisted(page.records, { listedAtMs: passStartedAtMs, nowMs, skewMs: ctx.clockSkewMs });
  const projects = new Set(events.map((e) => e.projectId));
  for (const p of projects) ctx.committed.forget(p);
  if (events.length > 0) await ctx.store.applyEvents(events, nowMs, { overwrite: true });
  return { listed: 0, corrected: reportCorrections(ctx, corrections), projects, cursor: page.cursor };
}

/** Corrections of a page, by project: counted, logged once per page, handed to the metrics. */
function reportCorrections(ctx: PipelineContext, corrections: readonly Correction[]): Partial<Record<CorrectionKind, number>> {
  const counts = countCorrections(corrections);
  if (corrections.length === 0) return counts;
  const byProject = new Map<string, Correction[]>();
  for (const c of corrections) byProject.set(c.projectId, [...(byProject.get(c.projectId) ?? []), c]);
  for (const [projectId, theirs] of byProject) ctx.onCorrections?.(projectId, theirs);
  const sample = corrections.slice(0, 10).map((c) => `${c.kind}:${c.projectId}/${c.imageId}`);
  ctx.log?.warn(
    { projects: byProject.size, corrections: counts, sample },
    "ledger corrected from Glance's listing: notifications were lost or forged (or the ledger is new)",
  );
  return counts;
}
