import type { OwnedImage } from '../ledger/glance-image.js';
import { countCorrections, repairFromListing, type CorrectionKind } from '../ledger/repair.js';
import type { PipelineContext } from './context.js';
import { judge } from './judge.js';
import type { ProjectReport } from './ports.js';

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

/**
 * Reconcile's step for one project of a whole-cloud listing: overwrite the ledger from it and
 * return the decision on it. The act is left to `enforceOnGlance`, which lists the project
 * afresh: a large cloud's listing can be minutes old by the time its last project is reached.
 */
export function applyListing(
  ctx: PipelineContext,
  projectId: string,
  listing: readonly OwnedImage[],
  listedAtMs: number,
  listedElsewhere?: ReadonlySet<string>,
): Promise<ProjectReport> {
  return ctx.locks.run(projectId, async () => {
    const owned = listing.filter((i) => i.owner === projectId);
    const corrected = await repair(ctx, projectId, owned, listedAtMs, listedElsewhere);
    return judge(ctx, projectId, owned, corrected, await ctx.limits.limitsFor(projectId)).report;
  });
}
