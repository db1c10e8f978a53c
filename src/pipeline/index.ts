import { hostname } from 'node:os';
import { LRUCache } from 'lru-cache';
import type { Correction } from '../ledger/repair.js';
import type { GlanceImage } from '../ledger/glance-image.js';
import type { Logger } from '../log.js';
import type { DoorLimits } from '../notification/parse.js';
import type { LimitSource } from '../quota/limits.js';
import type { Usage } from '../quota/resources.js';
import type { ProtectedPolicy } from '../quota/verify.js';
import type { ActionKind, ActionRecord, LedgerStore } from '../store/port.js';
import { CommittedTotals } from './committed.js';
import { ProjectLocks, type PipelineContext } from './context.js';
import { enforce, enforceAll, enforceOnGlance, evaluate, requireImages, type EnforceAllResult } from './enforce.js';
import { ingest, type IngestResult } from './ingest.js';
import { Lease } from './lease.js';
import { applyListingPage, beginListing, finishListing, sweepPage } from './listing.js';
import type { EnforcementMode, EnforcementReport, ImageService, ListedPage, ProjectReport } from './ports.js';

export type {
  DeleteOutcome,
  EnforcementMode,
  EnforcementReport,
  ImageService,
  ListedPage,
  ListPosition,
  ProjectFailure,
  ProjectReport,
  UnprotectOutcome,
} from './ports.js';
export type { IngestResult, MessageOutcome, MessageResult } from './ingest.js';
export type { EnforceAllResult } from './enforce.js';

/*
 * The one pipeline every door feeds (replay, consume, the functions, reconcile):
 *
 *   raw body -> parse -> ledger.apply (store, atomic) -> decide (estimate)       ingest.ts, enforce.ts
 *            -> Glance's listing of the project (the truth; overwrites the ledger)  listing.ts
 *            -> decide -> act -> audit                                            judge.ts, enforce.ts
 *
 * A door adapts only its input and its acknowledgement. The bus is a trigger and an estimate:
 * anyone who can publish on Glance's exchange can forge or drop notifications, so every act is
 * decided on Glance's own listing, never on the ledger.
 */

/** Images remembered as audited with an outcome that leaves them in place. */
const REPORTED_MEMORY = 100_000;

/** How long the store keeps what only bounds it (MESSAGE_, AUDIT_, DELETED_IMAGE_RETENTION_SECONDS). */
export interface Retention {
  messagesMs: number;
  actionsMs: number;
  deadImagesMs: number;
}

/** What the doors may read of the ledger, and the one value they keep beside it (reconcile's cursor). */
export type LedgerView = Pick<LedgerStore, 'description' | 'usage' | 'usages' | 'images' | 'projects' | 'actions' | 'getState' | 'setState'>;

/**
 * The settings come from the configuration (`pipelineOf` in src/composition-root.ts fills them
 * from it, defaults included): none has a default of its own here.
 */
export interface PipelineOptions {
  store: LedgerStore;
  limits: LimitSource;
  /** Glance's API; without it the pipeline decides but never acts (replay). */
  images?: ImageService | undefined;
  mode: EnforcementMode;
  /** PROTECTED_QUEUED_IMAGES. */
  protectedPolicy: ProtectedPolicy;
  /** Candidates of one project verified and acted on at once (ENFORCE_CONCURRENCY). */
  concurrency: number;
  /** A project's lease around its decision on Glance (LEASE_SECONDS). */
  leaseMs: number;
  /** At most one listing of a project per this long, across replicas (ENFORCE_INTERVAL_SECONDS). */
  enforceIntervalMs: number;
  /** This process among the replicas, in its lease holder tokens; host:pid by default. */
  replicaId?: string;
  exemptProjects: ReadonlySet<string>;
  /** MAX_MESSAGE_BYTES and CLOCK_SKEW_SECONDS. */
  door: DoorLimits;
  /** What `prune` keeps. */
  retention: Retention;
  log?: Logger | undefined;
  /** Milliseconds since the epoch; injected so tests and replays control time. */
  clock?: () => number;
  /** Called once per audited action, after it is recorded (metrics, outgoing notifications). */
  onAction?: (action: ActionRecord) => void | Promise<void>;
  /** Called when Glance's listing corrected the ledger (metrics). */
  onCorrections?: (projectId: string, corrections: readonly Correction[]) => void;
  /** Called with every decision's usage and limits, the estimate's and Glance's (per-project gauges). */
  onDecision?: (report: ProjectReport) => void;
}

/**
 * @example
 *   const pipeline = pipelineOf({ store, limits, images: glance }, config);
 *   const result = await pipeline.ingest([delivery.content]);
 *   for (const projectId of result.projects) await pipeline.enforce(projectId);
 */
export class Pipeline {
  /** Private: every door writes the ledger through the pipeline's steps, never around them. */
  private readonly ctx: PipelineContext;
  private readonly door: DoorLimits;
  private readonly retention: Retention;
  readonly mode: EnforcementMode;
  /** Read access to the ledger (status, audit, reconcile's cursor). */
  readonly ledger: LedgerView;

  constructor(options: PipelineOptions) {
    this.mode = options.mode;
    this.door = options.door;
    this.retention = options.retention;
    this.ledger = options.store;
    this.ctx = {
      store: options.store,
      limits: options.limits,
      images: options.images,
      mode: options.mode,
      protectedPolicy: options.protectedPolicy,
      exempt: options.exemptProjects,
      concurrency: options.concurrency,
      // A ledger time is believed as far ahead of now as the door lets one in.
      clockSkewMs: options.door.clockSkewSeconds * 1000,
      log: options.log,
      clock: options.clock ?? Date.now,
      onAction: options.onAction,
      onCorrections: options.onCorrections,
      onDecision: options.onDecision,
      committed: new CommittedTotals(),
      reported: new LRUCache<string, ActionKind>({ max: REPORTED_MEMORY }),
      locks: new ProjectLocks(),
      lease: { ttlMs: options.leaseMs, intervalMs: options.enforceIntervalMs, replicaId: options.replicaId ?? `${hostname()}:${process.pid}` },
    };
  }

  /**
   * Parse a batch of raw bodies and apply the image events in one atomic store write; the result
   * names the projects to decide for next (src/pipeline/ingest.ts).
   *
   * @example
   *   const { outcomes } = await pipeline.ingest([delivery.content]);
   *   if (outcomes[0].result === 'invalid') deadLetter(delivery, outcomes[0].reason);
   */
  ingest(bodies: readonly (Uint8Array | string)[]): Promise<IngestResult> {
    return ingest({ store: this.ctx.store, door: this.door, clock: this.ctx.clock, committed: this.ctx.committed, log: this.ctx.log }, bodies);
  }

  /** The pipeline's clock (ms): reconcile dates its listings with it. */
  now(): number {
    return this.ctx.clock();
  }

  /** The ledger's estimate for one project (src/pipeline/enforce.ts). */
  evaluate(projectId: string): Promise<ProjectReport> {
    return evaluate(this.ctx, projectId);
  }

  /**
   * The estimate, and when it finds candidates, the decision and act on Glance's own listing.
   * `usage`: the project's usage as the caller just read it from the ledger (`ledger.usages`, a
   * page of projects at once), instead of a read of its own.
   */
  enforce(projectId: string, usage?: Usage): Promise<EnforcementReport> {
    return enforce(this.ctx, projectId, usage);
  }

  /**
   * `enforce` for each project; a failure is collected and the others go on. A busy project
   * (ProjectBusyError), and every project not started by `deadlineMs`, is deferred.
   */
  enforceAll(projects: readonly string[], options: { deadlineMs?: number } = {}): Promise<EnforceAllResult> {
    return enforceAll(this.ctx, projects, options);
  }

  /** The truth path: list the project in Glance, repair the ledger, decide and act. */
  enforceOnGlance(projectId: string): Promise<EnforcementReport> {
    return enforceOnGlance(this.ctx, projectId);
  }

  /**
   * Glance's listing of every image, page by page, through the pipeline's own Glance (the one it
   * acts on): the reconcile door's input. Without a Glance (replay) it throws a ConfigError naming
   * the fix.
   */
  listPages(query: Parameters<ImageService['listPages']>[0] = {}): AsyncIterable<ListedPage> {
    return requireImages(this.ctx).listPages(query);
  }

  /** Reconcile's step for one page of the whole-cloud listing, `staged` when the pass began so (src/pipeline/listing.ts). */
  applyListingPage(page: readonly GlanceImage[], listedAtMs: number, passId: string, staged = false): ReturnType<typeof applyListingPage> {
    return applyListingPage(this.ctx, page, listedAtMs, passId, staged);
  }

  /** A new reconcile pass: whether it stages its listing, to load it in bulk (src/pipeline/listing.ts). */
  beginListing(): Promise<boolean> {
    return beginListing(this.ctx);
  }

  /** A staged listing's end: the staged images become the ledger's (src/pipeline/listing.ts). */
  finishListing(passId: string): Promise<void> {
    return finishListing(this.ctx, passId);
  }

  /** Reconcile's sweep, one page: what the pass did not list is tombstoned (src/pipeline/listing.ts). */
  sweepPage(passId: string, passStartedAtMs: number, cursor: string, limit: number): ReturnType<typeof sweepPage> {
    return sweepPage(this.ctx, passId, passStartedAtMs, cursor, limit);
  }

  /**
   * A lease in the ledger's store, for work replicas sharing the store must not do twice at once
   * (a reconcile pass); undefined while another holder has it (src/pipeline/lease.ts).
   */
  takeLease(name: string, ttlMs: number): Promise<Lease | undefined> {
    return Lease.take(this.ctx.store, name, this.ctx.lease.replicaId, ttlMs, this.ctx.clock, this.ctx.log);
  }

  /**
   * Keep the store bounded: processed message ids past their retention (dedupe stays exact within
   * it, and merging is idempotent beyond it), audit records past theirs, and records of deleted
   * images past theirs (a reconcile has since confirmed with Glance what they said). Every full
   * reconcile pass ends with it, whichever door ran the pass.
   */
  async prune(): Promise<{ messages: number; actions: number; deadImages: number }> {
    const { store, clock } = this.ctx;
    const now = clock();
    return {
      messages: await store.forgetMessagesBefore(now - this.retention.messagesMs),
      actions: await store.forgetActionsBefore(now - this.retention.actionsMs),
      deadImages: await store.forgetDeadImagesBefore(now - this.retention.deadImagesMs),
    };
  }
}
