import type { Usage } from '../quota/resources.js';
import type { ImageRecord } from './record.js';

/**
 * Glance's own usage definitions (glance/db/sqlalchemy/api.py, Glance 23+), one small function
 * each, over the ledger's records instead of Glance's tables.
 */

const MiB = 1024 * 1024;
// Lua twins: DEAD, UPLOADING and STAGING in src/store/redis/apply.lua.
const DEAD = new Set(['killed', 'pending_delete', 'deleted']);
const UPLOADING = new Set(['saving', 'uploading', 'importing']);
const STAGING = new Set(['uploading', 'importing']);

export function isLive(r: ImageRecord): boolean {
  return !r.deleted && !DEAD.has(r.status);
}

/** A copy-image or multi-store import sets the property on an otherwise active image. */
function isImporting(r: ImageRecord): boolean {
  return r.importing !== '';
}

function positiveSize(r: ImageRecord): number {
  return r.size !== null && r.size > 0 ? r.size : 0;
}

/**
 * Exact integer sums, kept per project by the stores so usage never needs a scan. Sizes are bytes
 * here and become MiB only in `usageFromTotals`, because Glance floors the sum, not each image.
 */
export interface UsageTotals {
  count: number;
  uploading: number;
  sizeBytes: number;
  stageBytes: number;
}

export const ZERO_TOTALS: Readonly<UsageTotals> = Object.freeze({ count: 0, uploading: 0, sizeBytes: 0, stageBytes: 0 });

/** What one record adds to its project's totals. Lua twin: `contribution` in src/store/redis/apply.lua. */
export function contributionOf(r: ImageRecord): UsageTotals {
  if (!isLive(r)) return ZERO_TOTALS;
  const uploading = UPLOADING.has(r.status) || isImporting(r);
  const staging = STAGING.has(r.status) || isImporting(r);
  const size = positiveSize(r);
  return {
    count: 1,
    uploading: uploading ? 1 : 0,
    // Glance multiplies by the number of locations; notifications carry none, so one (README).
    sizeBytes: size,
    stageBytes: staging ? size : 0,
  };
}

export function addTotals(a: UsageTotals, b: UsageTotals, sign: 1 | -1 = 1): UsageTotals {
  return {
    count: a.count + sign * b.count,
    uploading: a.uploading + sign * b.uploading,
    sizeBytes: a.sizeBytes + sign * b.sizeBytes,
    stageBytes: a.stageBytes + sign * b.stageBytes,
  };
}

export function usageFromTotals(t: UsageTotals): Usage {
  return {
    image_count_total: t.count,
    image_count_uploading: t.uploading,
    image_size_total: Math.floor(t.sizeBytes / MiB),
    image_stage_total: Math.floor(t.stageBytes / MiB),
  };
}

export function totalsOf(records: Iterable<ImageRecord>): UsageTotals {
  let t: UsageTotals = ZERO_TOTALS;
  for (const r of records) t = addTotals(t, contributionOf(r));
  return t;
}

/** Usage of one project from its records (the scan that the stores' totals must always equal). */
export function usageOf(records: Iterable<ImageRecord>): Usage {
  return usageFromTotals(totalsOf(records));
}
