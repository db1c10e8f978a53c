import type { OwnedImage } from '../ledger/glance-image.js';
import { eventFromGlance } from '../ledger/glance-image.js';
import { recordFromEvent, type ImageRecord } from '../ledger/record.js';
import type { CorrectionKind } from '../ledger/repair.js';
import { usageOf } from '../ledger/usage.js';
import { decide, isDeletable } from '../quota/decide.js';
import type { ProjectLimits } from '../quota/limits.js';
import type { PipelineContext } from './context.js';
import type { ProjectReport } from './ports.js';

/** The decision on Glance's listing, with what acting on it needs. */
export interface Judgement {
  report: ProjectReport;
  byId: ReadonlyMap<string, OwnedImage>;
  /** Protected images the rule would otherwise have picked: audited as skipped. */
  passedOver: readonly string[];
}

/** Usage and the decision on Glance's listing alone. */
export function judge(ctx: PipelineContext, projectId: string, listing: readonly OwnedImage[], corrected: Partial<Record<CorrectionKind, number>>, limits: ProjectLimits): Judgement {
  const byId = new Map<string, OwnedImage>();
  const records: ImageRecord[] = [];
  for (const image of listing) {
    byId.set(image.id, image);
    records.push(recordFromEvent(eventFromGlance(image)));
  }
  const usage = usageOf(records);
  const exempt = ctx.exempt.has(projectId);
  const { over, toDelete } = decide(records, usage, limits, exempt, isDeletable);
  // Protected images the rule would have picked first: recorded as skipped, with the reason,
  // while the next deletable images go in their place.
  const chosen = new Set(toDelete);
  const passedOver = over.length === 0 ? [] : decide(records, usage, limits, exempt).toDelete.filter((id) => !chosen.has(id) && byId.get(id)?.protected);
  if (over.length > 0) ctx.log?.info({ projectId, usage, limits, over, candidates: toDelete.length, exempt }, 'Glance confirms: project over quota');
  return { report: { projectId, usage, limits, over, toDelete, exempt, basis: 'glance', corrected }, byId, passedOver };
}
