import type { ImageRecord } from '../ledger/record.js';
import { isLive } from '../ledger/usage.js';
import type { ProjectLimits } from './limits.js';
import { CREATE_RATE, USAGE_RESOURCES, type Resource, type Usage } from './resources.js';

export interface Decision {
  /** Resources over their limit, in the fixed order of USAGE_RESOURCES, then image_create_rate. */
  over: Resource[];
  /** Image ids to remove, newest first. Always queued, live images. */
  toDelete: string[];
}

function isUnlimited(limit: number | undefined): limit is undefined {
  return limit === undefined || limit < 0;
}

/** Newest first: created_at descending, then the larger id first. */
export function newestFirst(a: ImageRecord, b: ImageRecord): number {
  if (a.createdAt !== b.createdAt) return b.createdAt - a.createdAt;
  return a.imageId < b.imageId ? 1 : a.imageId > b.imageId ? -1 : 0;
}

/** Only an image nobody has put data in yet: removing it loses nothing but an empty record. */
export function isRemovable(r: ImageRecord): boolean {
  return r.status === 'queued' && isLive(r);
}

/** Removable, and Glance would let us: what the decision on Glance's own listing may pick. */
export function isDeletable(r: ImageRecord): boolean {
  return isRemovable(r) && !r.protected;
}

function countExcess(records: readonly ImageRecord[], usage: Usage, limit: number, eligible: (r: ImageRecord) => boolean): ImageRecord[] {
  const excess = usage.image_count_total - limit;
  return records.filter(eligible).sort(newestFirst).slice(0, Math.max(0, excess));
}

/**
 * Images created past the rate: walking all of the project's images in (created_at, id) order,
 * one is over when more than N images (itself included) were created less than W seconds before
 * it. Deleted images count: churn fills Glance's tables with soft-deleted rows all the same.
 */
export function overRate(records: readonly ImageRecord[], count: number, windowSeconds: number): ImageRecord[] {
  const ordered = [...records].sort((a, b) => -newestFirst(a, b));
  const over: ImageRecord[] = [];
  let start = 0;
  for (let i = 0; i < ordered.length; i++) {
    const created = ordered[i]!.createdAt;
    while (created - ordered[start]!.createdAt >= windowSeconds) start++;
    if (i - start + 1 > count) over.push(ordered[i]!);
  }
  return over;
}

/**
 * The quota rule for one project, a plain function of its records, usage and limits. On the
 * ledger it is an estimate (`isRemovable`); on Glance's listing it is the act, and `eligible` is
 * `isDeletable` so that a protected image never takes the place of one that can go.
 *
 * @example
 *   decide(records, usageOf(records), { image_count_total: 5 }, false)
 *   // => { over: ['image_count_total'], toDelete: ['<newest queued id>', ...] }
 */
export function decide(
  records: readonly ImageRecord[],
  usage: Usage,
  limits: ProjectLimits,
  exempt: boolean,
  eligible: (r: ImageRecord) => boolean = isRemovable,
): Decision {
  const over: Resource[] = USAGE_RESOURCES.filter((r) => {
    const limit = limits[r];
    return !isUnlimited(limit) && usage[r] > limit;
  });
  const candidates = new Map<string, ImageRecord>();
  const countLimit = limits.image_count_total;
  if (over.includes('image_count_total') && !isUnlimited(countLimit)) {
    for (const r of countExcess(records, usage, countLimit, eligible)) candidates.set(r.imageId, r);
  }
  const rate = limits.image_create_rate;
  if (rate) {
    const fast = overRate(records, rate.count, rate.windowSeconds);
    if (fast.length > 0) over.push(CREATE_RATE);
    for (const r of fast) if (eligible(r)) candidates.set(r.imageId, r);
  }
  if (exempt) return { over, toDelete: [] };
  return { over, toDelete: [...candidates.values()].sort(newestFirst).map((r) => r.imageId) };
}

/**
 * Which of a project's records the decision needs. The usage alone answers most messages; the
 * count rule needs only the newest removable images, as many as the excess; only the rate rule
 * reads the whole history.
 */
export function recordsNeeded(usage: Usage, limits: ProjectLimits): { all: true } | { removable: number } | null {
  if (limits.image_create_rate) return { all: true };
  const limit = limits.image_count_total;
  return !isUnlimited(limit) && usage.image_count_total > limit ? { removable: usage.image_count_total - limit } : null;
}
