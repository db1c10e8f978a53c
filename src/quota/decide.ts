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

export function isUnlimited(limit: number | undefined): limit is undefined {
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

function countExcess(records: readonly ImageRecord[], usage: Usage, limit: number): ImageRecord[] {
  const excess = usage.image_count_total - limit;
  return records.filter(isRemovable).sort(newestFirst).slice(0, Math.max(0, excess));
}

/**
 * Images created past the rate: of the images created in the last W seconds (before `nowSeconds`;
 * a date after it is in the window too), the ones past the first N in creation order. An old burst
 * is not a violation: it is only counted, by the count rule. Deleted images count: churn fills
 * Glance's tables with soft-deleted rows all the same.
 */
export function overRate(records: readonly ImageRecord[], count: number, windowSeconds: number, nowSeconds: number): ImageRecord[] {
  return records
    .filter((r) => nowSeconds - r.createdAt < windowSeconds)
    .sort((a, b) => -newestFirst(a, b))
    .slice(count);
}

export interface DecideOptions {
  /** EXEMPT_PROJECTS names the project: it is reported, never given candidates. */
  exempt: boolean;
  /** Now, in epoch seconds: where the rate rule's window ends. */
  nowSeconds: number;
}

/**
 * The quota rule for one project, a plain function of its records, usage, limits and the time.
 * On the ledger it is an estimate; on Glance's listing it is the act. Every queued live image is
 * a candidate, protected or not: a protected image past the limit is Glance's own to refuse a
 * DELETE of, and it must never make the project's other images go in its place (what the act does
 * with it is the act's: src/pipeline/enforce.ts).
 *
 * @example
 *   decide(records, usageOf(records), { image_count_total: 5 }, { exempt: false, nowSeconds })
 *   // => { over: ['image_count_total'], toDelete: ['<newest queued id>', ...] }
 */
export function decide(records: readonly ImageRecord[], usage: Usage, limits: ProjectLimits, options: DecideOptions): Decision {
  const over: Resource[] = USAGE_RESOURCES.filter((r) => {
    const limit = limits[r];
    return !isUnlimited(limit) && usage[r] > limit;
  });
  const candidates = new Map<string, ImageRecord>();
  const countLimit = limits.image_count_total;
  if (over.includes('image_count_total') && !isUnlimited(countLimit)) {
    for (const r of countExcess(records, usage, countLimit)) candidates.set(r.imageId, r);
  }
  const rate = limits.image_create_rate;
  if (rate) {
    const fast = overRate(records, rate.count, rate.windowSeconds, options.nowSeconds);
    if (fast.length > 0) over.push(CREATE_RATE);
    for (const r of fast) if (isRemovable(r)) candidates.set(r.imageId, r);
  }
  if (options.exempt) return { over, toDelete: [] };
  return { over, toDelete: [...candidates.values()].sort(newestFirst).map((r) => r.imageId) };
}

/**
 * Which of a project's records the decision needs: what `decide` gets, read through the store's
 * indexes, so that a project's history (tombstones of churn, old bursts) costs nothing to a
 * notification. The usage alone answers most messages; the count rule needs only the newest
 * removable images, as many as the excess; the rate rule only the records created in its window.
 * Given the union of the two reads, `decide` answers as it would on every record: the count rule
 * takes the newest removable ones, all of which are in the first read, and the rate rule filters
 * the window, all of which is in the second.
 */
export interface RecordsNeeded {
  /** The project's newest removable images, this many (0: none). */
  removable: number;
  /** Every record created at or after this time (epoch seconds), tombstones included; absent: none. */
  createdSince?: number;
}

export function recordsNeeded(usage: Usage, limits: ProjectLimits, nowSeconds: number): RecordsNeeded | null {
  const limit = limits.image_count_total;
  const removable = !isUnlimited(limit) && usage.image_count_total > limit ? usage.image_count_total - limit : 0;
  const rate = limits.image_create_rate;
  // overRate's window is `nowSeconds - createdAt < windowSeconds`; created_at is whole seconds
  // (Glance keeps no fraction), so the first second in it is the one after nowSeconds - W.
  if (rate) return { removable, createdSince: Math.floor(nowSeconds - rate.windowSeconds) + 1 };
  return removable > 0 ? { removable } : null;
}
