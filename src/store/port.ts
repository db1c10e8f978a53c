import type { ApplyResult } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import type { ImageEvent } from '../notification/parse.js';
import type { Usage } from '../quota/resources.js';

/**
 * Where the ledger lives. One contract suite (test/contract) holds every adapter to the same
 * behaviour; an adapter's only freedom is how it makes `applyEvents` atomic.
 */
export interface LedgerStore {
  /** e.g. "sqlite:///var/lib/gqe/ledger.db", secrets left out: safe to log. */
  readonly description: string;

  /**
   * Apply a batch atomically: either every event's effect and its message id are committed, or
   * none is. A message id seen before (within the retention) changes nothing and is reported
   * as 'duplicate', also when it repeats inside the batch.
   */
  applyEvents(events: readonly ImageEvent[], nowMs: number): Promise<ApplyResult>;

  /** Usage from the totals kept in step by `applyEvents`: no scan of the project's images. */
  usage(projectId: string): Promise<Usage>;

  /** Every record of the project, tombstones included. */
  images(projectId: string): Promise<ImageRecord[]>;

  /** Every project that owns at least one record (tombstones included), sorted. */
  projects(): Promise<string[]>;

  /** Drop processed message ids recorded before `beforeMs`; returns how many. */
  forgetMessagesBefore(beforeMs: number): Promise<number>;

  close(): Promise<void>;
}
