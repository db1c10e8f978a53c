import type { LRUCache } from 'lru-cache';
import type { Correction } from '../ledger/repair.js';
import type { Logger } from '../log.js';
import type { LimitSource } from '../quota/limits.js';
import type { ProtectedPolicy } from '../quota/verify.js';
import type { ActionKind, ActionRecord, LedgerStore } from '../store/port.js';
import type { CommittedTotals } from './committed.js';
import type { LeaseSettings } from './lease.js';
import type { EnforcementMode, ImageService, ProjectReport } from './ports.js';

/** What the pipeline's steps share: its parts, its settings, and the little state it keeps. */
export interface PipelineContext {
  store: LedgerStore;
  limits: LimitSource;
  /** Glance's API; without it the pipeline decides but never acts (replay). */
  images: ImageService | undefined;
  mode: EnforcementMode;
  /** PROTECTED_QUEUED_IMAGES. */
  protectedPolicy: ProtectedPolicy;
  exempt: ReadonlySet<string>;
  /** Candidates of one project verified and acted on at once. */
  concurrency: number;
  /** How far a ledger time may lie ahead of now and still be believed (CLOCK_SKEW_SECONDS). */
  clockSkewMs: number;
  log: Logger | undefined;
  clock: () => number;
  onAction: ((action: ActionRecord) => void | Promise<void>) | undefined;
  onCorrections: ((projectId: string, corrections: readonly Correction[]) => void) | undefined;
  onDecision: ((report: ProjectReport) => void) | undefined;
  committed: CommittedTotals;
  /**
   * Images audited with an outcome that leaves them in place (a dry run's `would-delete`, a kept
   * `protected`): each is audited once, not again at every listing that finds it past the limit.
   */
  reported: LRUCache<string, ActionKind>;
  locks: ProjectLocks;
  /** The project's lease in the shared store around a decision on Glance (LEASE_SECONDS, ENFORCE_INTERVAL_SECONDS). */
  lease: LeaseSettings;
}

/**
 * One decision on Glance at a time per project in this process: the consumer's worker and a
 * reconcile must not both delete from two listings of the same moment.
 */
export class ProjectLocks {
  private readonly busy = new Map<string, Promise<void>>();

  async run<T>(projectId: string, work: () => Promise<T>): Promise<T> {
    const before = this.busy.get(projectId);
    const run = (before ?? Promise.resolve()).then(work);
    const tail = run.then(
      () => {},
      () => {},
    );
    this.busy.set(projectId, tail);
    try {
      return await run;
    } finally {
      if (this.busy.get(projectId) === tail) this.busy.delete(projectId);
    }
  }
}
