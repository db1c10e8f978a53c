import { LRUCache } from 'lru-cache';
import { usageFromTotals, type UsageTotals } from '../ledger/usage.js';
import type { Usage } from '../quota/resources.js';

/**
 * Totals a batch committed are taken as the project's usage by the next decision on it for this
 * long; past it (or past this many projects waiting), the decision reads the store.
 */
const COMMITTED_TOTALS_MS = 5_000;
const COMMITTED_TOTALS_MAX = 100_000;

/**
 * Per project, the totals the last batch that changed it committed (`ApplyResult.totals`) and
 * when: what a decision would otherwise read back from the store, one query per project, right
 * after the batch wrote it. Taken once; forgotten by any other write the pipeline makes to the
 * project (a repair from Glance, a tombstone).
 */
export class CommittedTotals {
  private readonly byProject = new LRUCache<string, { totals: UsageTotals; atMs: number }>({ max: COMMITTED_TOTALS_MAX });

  remember(totals: ReadonlyMap<string, UsageTotals>, atMs: number): void {
    for (const [projectId, t] of totals) this.byProject.set(projectId, { totals: t, atMs });
  }

  /** The project's committed totals as usage, taken once, if they are recent enough at `nowMs`. */
  take(projectId: string, nowMs: number): Usage | undefined {
    const c = this.byProject.get(projectId);
    if (!c) return undefined;
    this.byProject.delete(projectId);
    return nowMs - c.atMs <= COMMITTED_TOTALS_MS ? usageFromTotals(c.totals) : undefined;
  }

  forget(projectId: string): void {
    this.byProject.delete(projectId);
  }

  /** Every project's: the store's totals were all written anew (a staged listing's finish). */
  clear(): void {
    this.byProject.clear();
  }
}
