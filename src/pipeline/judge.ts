import { recordFromGlance, type OwnedImage } from '../ledger/glance-image.js';
import type { ImageRecord } from '../ledger/record.js';
import type { CorrectionKind } from '../ledger/repair.js';
import { usageOf } from '../ledger/usage.js';
import { decide } from '../quota/decide.js';
import type { ProjectLimits } from '../quota/limits.js';
import type { PipelineContext } from './context.js';
import type { ProjectReport } from './ports.js';

/** The decision on Glance's listing, with the listing's view of each image. */
export interface Judgement {
  report: ProjectReport;
  byId: ReadonlyMap<string, OwnedImage>;
}

/**
 * Usage and the decision on Glance's listing alone. An image listed twice (its `os_hidden` flipped
 * between the listing's two passes) counts once.
 */
export function judge(
  ctx: PipelineContext,
  projectId: string,
  listing: readonly OwnedImage[],
  corrected: Partial<Record<CorrectionKind, number>>,
  limits: ProjectLimits,
): Judgement {
  const byId = new Map<string, OwnedImage>();
  for (const image of listing) byId.set(image.id, image);
  const records: ImageRecord[] = [...byId.values()].map(recordFromGlance);
  const usage = usageOf(records);
  const exempt = ctx.exempt.has(projectId);
  const { over, toDelete } = decide(records, usage, limits, { exempt, nowSeconds: Math.floor(ctx.clock() / 1000) });
  if (over.length > 0) ctx.log?.info({ projectId, usage, limits, over, candidates: toDelete.length, exempt }, 'Glance confirms: project over quota');
  const report: ProjectReport = { projectId, usage, limits, over, toDelete, exempt, basis: 'glance', corrected };
  ctx.onDecision?.(report);
  return { report, byId };
}
