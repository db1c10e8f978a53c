import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { ProjectBusyError } from '../errors.js';
import type { CorrectionKind } from '../ledger/repair.js';
import type { EnforcementReport, Pipeline, ProjectFailure } from '../pipeline/index.js';
import type { Lease } from '../pipeline/lease.js';
import type { Usage } from '../quota/resources.js';
import { backoffMs } from '../retry.js';

/** Where the pass in progress stands, kept beside the ledger: any run, on any replica, goes on from there. */
export const RECONCILE_PASS = 'reconcile.pass';

/** The lease a run holds while it works on the pass: one run at a time per ledger, whatever the replicas. */
export const RECONCILE_LEASE = 'reconcile';

/** Kept free before a function's timeout: no page or project is started within it. */
export const TIMEOUT_MARGIN_MS = 30_000;

/** A pass whose first projects all fail stops after this many: Glance or the store is down, not one project odd. */
export const FAILED_IN_A_ROW = 3;

/** Records per page of the sweep; projects per page of the decisions. */
const SWEEP_PAGE = 1000;
const PROJECT_PAGE = 500;
/** Projects decided at once: most decisions are a usage read and no Glance call. */
const DECIDE_CONCURRENCY = 4;
/**
 * The run's lease, renewed every third of it while the run works: a run that died (a SIGTERM
 * mid-pass, a crash) leaves the pass to the next within this.
 */
export const RECONCILE_LEASE_MS = 30_000;
/** Reports a summary keeps (projects over a limit or acted on); the rest are only counted. */
const REPORTS_KEPT = 1000;
const FAILURES_KEPT = 100;
/** How often `reconcile --project` waits out a project another decision holds before it gives up. */
const BUSY_ATTEMPTS = 5;

/**
 * A pass has three phases: `list` writes Glance's listing over the ledger page by page, marking
 * what it listed; `sweep` tombstones what the pass did not mark; `decide` walks the projects that
 * still have live images and enforces those over a limit, on a fresh listing of their own.
 */
const PassState = z.object({
  id: z.string().min(1),
  startedAtMs: z.number().int(),
  phase: z.enum(['list', 'sweep', 'decide']),
  /** Where the listing goes on (null: from the first page). */
  position: z.object({ hidden: z.boolean(), marker: z.string().optional() }).nullable(),
  sweepCursor: z.string(),
  projectCursor: z.string(),
  /**
   * The pass stages its listing (a ledger no pass has listed yet: `Pipeline.beginListing`), which
   * becomes the ledger's when the listing ends; false once it has. A state kept before it existed
   * reads as false.
   */
  staged: z.boolean().default(false),
});
type PassState = z.infer<typeof PassState>;
export type ReconcilePhase = PassState['phase'];

export interface ReconcileProgress {
  phase: ReconcilePhase;
  listed: number;
  decided: number;
}

export interface ReconcileOptions {
  /** Only this project, on a fresh listing of its own; otherwise the whole pass. */
  projectId?: string;
  /** Start no page or project after this long (RECONCILE_BUDGET_SECONDS); unset, the run goes to the pass's end. */
  budgetMs?: number;
  /** Lambda's `context.getRemainingTimeInMillis`: nothing is started within TIMEOUT_MARGIN_MS of the timeout. */
  remainingMs?: () => number;
  /** Called after each page and project, for a progress line. */
  onProgress?: (progress: ReconcileProgress) => void;
  /** Called with every project's decision (the gauges of a whole pass). */
  onReport?: (report: EnforcementReport) => void;
  /**
   * Called with a project another decision held (ProjectBusyError): that decision's listing may
   * predate what this pass saw, or its holder may have died holding it, so someone must look
   * again once it is free (consume's worker, which waits out the lease).
   */
  onDeferred?: (projectId: string) => void;
}

export interface ReconcileSummary {
  /** The pass this run worked on. */
  passId: string;
  /** Decisions worth reading (over a limit, or acted on), at most REPORTS_KEPT; every decision is counted in `decided`. */
  projects: EnforcementReport[];
  /** Projects decided in this run. */
  decided: number;
  /** Projects another replica was deciding at the time: that replica acts on them. */
  deferred: number;
  /** Images Glance listed in this run. */
  listed: number;
  /** Listed images Glance described in a way the enforcer could not read: left alone, counted. */
  unreadable: number;
  /** How Glance's listing corrected the ledger, by kind. */
  corrected: Partial<Record<CorrectionKind, number>>;
  /** Projects whose decision failed (Glance, Keystone or the store), at most FAILURES_KEPT: the rest went on. */
  failures: ProjectFailure[];
  /** The run ended the pass (which then pruned the store); false when a budget or failures cut it. */
  complete: boolean;
  /** The phase the run ended in: where the next run goes on. */
  phase: ReconcilePhase | 'done';
  /** Another run (another replica's) held the pass: this one did nothing. */
  busy?: boolean;
  /** What `Pipeline.prune` forgot at the end of a complete pass. */
  pruned?: { messages: number; actions: number; deadImages: number };
  durationMs: number;
}

/**
 * The reconcile door, the one implementation the CLI, `consume` and the scheduled function run:
 * Glance's listing is the truth. It catches up on whatever the bus lost or forged: images made
 * before the enforcer ran, a purged queue, notifications turned off for a while, forged deletes,
 * forged owners. Memory does not grow with the cloud:
 *
 * 1. `list`: every image (all pages, every visibility, hidden ones too) is written over the ledger
 *    page by page, and marked in the store as listed by this pass (`Pipeline.applyListingPage`).
 *    On a ledger no pass has listed yet, where the store can, the pages are staged instead and
 *    loaded at once, sorted, when the listing ends (`Pipeline.finishListing`, BulkListing).
 * 2. `sweep`: live records the pass did not mark are tombstoned in bulk, those made after the pass
 *    began spared (`Pipeline.sweepPage`): a forged owner's images go here before any decision.
 * 3. `decide`: the projects with live images, page by page in order, each decided on the ledger,
 *    and one with candidates enforced on a fresh listing of its own (`Pipeline.enforce`).
 * 4. The store is pruned, and the pass is over.
 *
 * The pass's state (phase, Glance's marker, cursors) is kept in the store after every page, so a
 * run cut by its budget, its timeout or a crash is resumed by the next run, on any replica; the
 * run holds a lease in the store while it works, so replicas sharing a ledger take turns on one
 * pass instead of each listing the cloud. One project's failure is collected and the others go
 * on; a pass whose first FAILED_IN_A_ROW projects all fail stops there.
 *
 * @example
 *   const summary = await reconcile(pipeline);                                         // the CLI, consume
 *   const run = await reconcile(pipeline, { budgetMs: 600_000, remainingMs });         // the function
 */
export async function reconcile(pipeline: Pipeline, options: ReconcileOptions = {}): Promise<ReconcileSummary> {
  const started = pipeline.now();
  const run = new Run(pipeline, options, started);
  if (options.projectId) return run.oneProject(options.projectId);

  const lease = await pipeline.takeLease(RECONCILE_LEASE, RECONCILE_LEASE_MS);
  if (!lease) return run.summary('', 'list', { busy: true });
  try {
    return await run.pass(lease);
  } finally {
    await lease.end();
  }
}

/** One run of the reconcile door: what it did so far, and when it must stop starting things. */
class Run {
  private readonly failures: ProjectFailure[] = [];
  private failed = 0;
  private readonly reports: EnforcementReport[] = [];
  private decided = 0;
  private deferred = 0;
  private listed = 0;
  private unreadable = 0;
  private readonly corrected: Partial<Record<CorrectionKind, number>> = {};
  /** When no more work starts: the budget; `hard`: the function's timeout less a margin. */
  private readonly deadline: number;
  private readonly hard: number;
  /** Something was done in this run: the first unit of work starts even past the budget, or a large pass could never move. */
  private moved = false;

  constructor(
    private readonly pipeline: Pipeline,
    private readonly options: ReconcileOptions,
    private readonly started: number,
  ) {
    this.hard = started + (options.remainingMs?.() ?? Infinity) - TIMEOUT_MARGIN_MS;
    this.deadline = Math.min(started + (options.budgetMs ?? Infinity), this.hard);
  }

  async oneProject(projectId: string): Promise<ReconcileSummary> {
    // One project: its own listing is fresh, so the truth path decides and acts on it at once.
    // Asked for by name, it waits its turn when another decision holds the project (or has just
    // been made: ENFORCE_INTERVAL_SECONDS), rather than report nothing.
    try {
      let report: EnforcementReport | undefined;
      for (let attempt = 1; !report; attempt++) {
        try {
          report = await this.pipeline.enforceOnGlance(projectId);
        } catch (err) {
          if (!(err instanceof ProjectBusyError) || attempt >= BUSY_ATTEMPTS) throw err;
          await new Promise((resolve) => setTimeout(resolve, err.retryAfterMs));
        }
      }
      this.keep(report);
      this.listed = report.usage.image_count_total;
    } catch (err) {
      this.fail(projectId, err);
    }
    return this.summary('', 'done', { complete: this.failed === 0 });
  }

  async pass(lease: Lease): Promise<ReconcileSummary> {
    const state = await this.load();
    if (this.mustStop()) return this.summary(state.id, state.phase);
    const save = async () => {
      // Lost to another run (this one stalled past the lease): stop here, it goes on.
      if (lease.lost) throw new Error(`reconcile: the lease on pass ${state.id} was taken over by another run`);
      await this.pipeline.ledger.setState(RECONCILE_PASS, JSON.stringify(state));
    };

    if (state.phase === 'list') {
      const pages = this.pipeline.listPages({ from: state.position ?? undefined, onUnreadable: () => void this.unreadable++ });
      // The next page is asked for while this one is written, unless the run must stop: a page
      // asked for is written before the run stops, so each page is listed once over all the runs.
      let stopped = false;
      const more = () => {
        stopped = this.mustStop(true);
        return !stopped;
      };
      for await (const page of readAhead(pages, more)) {
        const repair = await this.pipeline.applyListingPage(page.images, this.pipeline.now(), state.id, state.staged);
        this.listed += repair.listed;
        this.add(repair.corrected);
        state.position = page.next;
        if (page.next === null) state.phase = 'sweep';
        await save();
        this.moved = true;
        this.progress(state.phase);
      }
      if (stopped && state.phase === 'list') return this.summary(state.id, 'list');
      // A listing that ends without a last page (Glance gave none) ends all the same.
      state.phase = 'sweep';
    }

    if (state.phase === 'sweep') {
      if (state.staged) {
        // Before the sweep, which must see what the pass listed. Done twice (a run stopped before
        // saving this), the second finds nothing staged.
        await this.pipeline.finishListing(state.id);
        state.staged = false;
        await save();
        this.moved = true;
      }
      for (;;) {
        if (this.mustStop()) return this.summary(state.id, 'sweep');
        const swept = await this.pipeline.sweepPage(state.id, state.startedAtMs, state.sweepCursor, SWEEP_PAGE);
        this.add(swept.corrected);
        state.sweepCursor = swept.cursor;
        if (swept.cursor === '') state.phase = 'decide';
        await save();
        this.moved = true;
        if (swept.cursor === '') break;
      }
    }

    let slowest = 0;
    for (;;) {
      const page = await this.pipeline.ledger.projects({ after: state.projectCursor, limit: PROJECT_PAGE });
      if (page.length === 0) break;
      // The page's usage in one read: at a cloud's scale, a read per project was most of this phase.
      const usages = await this.pipeline.ledger.usages(page);
      let next = 0;
      const decideNext = async (): Promise<void> => {
        for (;;) {
          const now = this.pipeline.now();
          if (next >= page.length || now >= this.hard || (this.moved && now + slowest > this.deadline) || this.failedAtStart()) return;
          const projectId = page[next++]!;
          this.moved = true;
          await this.decide(projectId, usages.get(projectId));
          slowest = Math.max(slowest, this.pipeline.now() - now);
        }
      };
      await Promise.all(Array.from({ length: DECIDE_CONCURRENCY }, decideNext));
      // Projects start in order and each started one has finished: the pass goes on after the last
      // started, failed ones included (the next pass does them again), unless all the run's
      // decisions failed: a service is down, and the next run starts before them.
      if (next > 0 && !this.failedAtStart()) state.projectCursor = page[next - 1]!;
      await save();
      if (next < page.length) return this.summary(state.id, 'decide');
    }

    await this.pipeline.ledger.setState(RECONCILE_PASS, '');
    return this.summary(state.id, 'done', { complete: true, pruned: await this.pipeline.prune() });
  }

  /** The pass in progress, or a new one. A state this version cannot read starts a new pass (and says so). */
  private async load(): Promise<PassState> {
    const kept = await this.pipeline.ledger.getState(RECONCILE_PASS);
    if (kept) {
      let json: unknown;
      try {
        json = JSON.parse(kept);
      } catch {
        json = undefined;
      }
      const parsed = PassState.safeParse(json);
      if (parsed.success) return parsed.data;
    }
    const staged = await this.pipeline.beginListing();
    return { id: randomUUID(), startedAtMs: this.pipeline.now(), phase: 'list', position: null, sweepCursor: '', projectCursor: '', staged };
  }

  private async decide(projectId: string, usage: Usage | undefined): Promise<void> {
    try {
      const report = await this.pipeline.enforce(projectId, usage);
      this.decided++;
      this.keep(report);
      this.options.onReport?.(report);
    } catch (err) {
      // Another replica is deciding it right now (its lease): that replica acts on it.
      if (err instanceof ProjectBusyError) {
        this.deferred++;
        this.options.onDeferred?.(projectId);
      } else this.fail(projectId, err);
    }
    this.progress('decide');
  }

  /** Past the hard deadline, or past the budget once the run has moved (`moved`: it will have, the page in hand is written). */
  private mustStop(moved = this.moved): boolean {
    const now = this.pipeline.now();
    return now >= this.hard || (moved && now >= this.deadline);
  }

  /** The first projects of the run all failed: a service is down, not one project odd. */
  private failedAtStart(): boolean {
    return this.decided === 0 && this.failed >= FAILED_IN_A_ROW;
  }

  private keep(report: EnforcementReport): void {
    if ((report.over.length > 0 || report.actions.length > 0) && this.reports.length < REPORTS_KEPT) this.reports.push(report);
  }

  private fail(projectId: string, err: unknown): void {
    this.failed++;
    if (this.failures.length < FAILURES_KEPT) this.failures.push({ projectId, error: err instanceof Error ? err : new Error(String(err)) });
  }

  private add(counts: Partial<Record<CorrectionKind, number>>): void {
    for (const [k, n] of Object.entries(counts) as [CorrectionKind, number][]) this.corrected[k] = (this.corrected[k] ?? 0) + n;
  }

  private progress(phase: ReconcilePhase): void {
    this.options.onProgress?.({ phase, listed: this.listed, decided: this.decided });
  }

  summary(passId: string, phase: ReconcilePhase | 'done', rest: Partial<Pick<ReconcileSummary, 'complete' | 'busy' | 'pruned'>> = {}): ReconcileSummary {
    return {
      passId,
      projects: this.reports,
      decided: this.decided,
      deferred: this.deferred,
      listed: this.listed,
      unreadable: this.unreadable,
      corrected: this.corrected,
      failures: this.failures,
      complete: false,
      phase,
      ...rest,
      durationMs: this.pipeline.now() - this.started,
    };
  }
}

/**
 * `consume`'s schedule for the reconcile: one at start, then every RECONCILE_INTERVAL; a failed
 * run comes back after a backoff (5 s doubling to 5 min); `soon()` runs one as soon as the run in
 * hand is over (after a broker reconnect, when Glance's notifications may have reached no queue).
 */
export class ReconcileSchedule {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly run: () => Promise<ReconcileSummary>,
    private readonly options: {
      intervalMs: number;
      onSummary: (summary: ReconcileSummary) => void | Promise<void>;
      onFailure: (err: unknown, retryInMs: number) => void;
    },
  ) {}

  start(): void {
    this.running = this.once(0);
  }

  soon(): void {
    void (async () => {
      await this.running?.catch(() => {});
      if (this.stopped) return;
      clearTimeout(this.timer);
      this.running = this.once(0);
    })();
  }

  /** No more runs; the run in hand, if any (it goes on until it settles or the process exits). */
  stop(): Promise<void> | undefined {
    this.stopped = true;
    clearTimeout(this.timer);
    return this.running;
  }

  private async once(failedBefore: number): Promise<void> {
    let next: { failed: number; inMs: number };
    try {
      const summary = await this.run();
      await this.options.onSummary(summary);
      // Another run holds the pass (a replica, or this process's predecessor that died holding
      // it): look again once its lease could have lapsed, not a whole interval later.
      next = { failed: 0, inMs: summary.busy ? RECONCILE_LEASE_MS : this.options.intervalMs };
    } catch (err) {
      const delay = backoffMs(failedBefore + 1, 5_000, 300_000);
      this.options.onFailure(err, delay);
      next = { failed: failedBefore + 1, inMs: delay };
    }
    if (this.stopped || next.inMs <= 0) return;
    this.timer = setTimeout(() => (this.running = this.once(next.failed)), next.inMs);
  }
}

/**
 * The items of `source`, each next one asked for as soon as the one before is handed out, so that
 * the caller's work on an item overlaps the wait for the next (a Glance page in flight while the
 * last one is written to the store). `more()` is asked when an item arrives: false, and nothing
 * more is asked for; the items asked for are all handed out. An early failure waits its turn.
 */
export async function* readAhead<T>(source: AsyncIterable<T>, more: () => boolean): AsyncGenerator<T, void, undefined> {
  const it = source[Symbol.asyncIterator]();
  let next: Promise<IteratorResult<T>> | undefined = it.next();
  try {
    while (next) {
      const item = await next;
      if (item.done) return;
      next = more() ? it.next() : undefined;
      // Handled when its turn comes; until then, not an unhandled rejection.
      next?.catch(() => {});
      // it.next() only starts the next item: the request it makes is written to its socket on a
      // later tick of the event loop, which a consumer that never waits on I/O (the ledger's
      // writes are synchronous) holds back until it is done with this item. One turn of the loop
      // here sends it, so that Glance serves the next page while this one is written.
      if (next) await new Promise<void>((resolve) => setImmediate(resolve));
      yield item.value;
    }
  } finally {
    if (next) await next.catch(() => {});
    await it.return?.();
  }
}
