import type { OwnedImage } from '../ledger/glance-image.js';
import type { CorrectionKind } from '../ledger/repair.js';
import type { EnforcementReport, Pipeline, ProjectFailure, ProjectReport } from '../pipeline/index.js';
import { backoffMs } from '../retry.js';

/** Where a budgeted reconcile keeps the last project it finished in the current pass. */
export const RECONCILE_CURSOR = 'reconcile.cursor';

/** Kept free before a function's timeout: no project is started within it. */
export const TIMEOUT_MARGIN_MS = 30_000;

/** A pass whose first projects all fail stops after this many: Glance or the store is down, not one project odd. */
export const FAILED_IN_A_ROW = 3;

export interface ReconcileOptions {
  /** Only this project, on a fresh listing of its own; otherwise the whole pass. */
  projectId?: string;
  /** Start no project after this long (RECONCILE_BUDGET_SECONDS); unset, the pass runs to its end. */
  budgetMs?: number;
  /** Lambda's `context.getRemainingTimeInMillis`: no project is started within TIMEOUT_MARGIN_MS of the timeout. */
  remainingMs?: () => number;
  /**
   * Resume after the project where the last run stopped (RECONCILE_CURSOR, kept beside the ledger
   * and set after every project), and clear it when the pass completes: for runs that a budget cuts.
   */
  resume?: boolean;
  /** Called after each project, for a progress bar. */
  onProgress?: (done: number, total: number, projectId: string) => void;
}

export interface ReconcileSummary {
  /** The projects reconciled in this run, in order. */
  projects: EnforcementReport[];
  /** Images Glance listed. */
  listed: number;
  /** Listed images Glance described in a way the enforcer could not read: left alone, counted. */
  unreadable: number;
  /** How Glance's listing corrected the ledger, by kind, summed over the projects. */
  corrected: Partial<Record<CorrectionKind, number>>;
  /** Projects whose reconcile failed (Glance, Keystone or the store): the rest went on. */
  failures: ProjectFailure[];
  /** The run reached its last project (a whole pass then prunes the store); false when a budget or failures cut it. */
  complete: boolean;
  /** Projects of the pass still to do. */
  remaining: number;
  /** With `resume`: where the next run starts (after this project; '' when the pass is complete). */
  cursor: string;
  /** What `Pipeline.prune` forgot at the end of a complete pass. */
  pruned?: { messages: number; actions: number; deadImages: number };
  durationMs: number;
}

/**
 * The reconcile door, the one implementation the CLI, `consume` and the scheduled function run:
 * Glance's listing is the truth. One listing of every image (all pages, every visibility, hidden
 * ones too) is written over each project's ledger (`Pipeline.applyListing`), and a project that
 * listing shows over its quota is enforced on a fresh listing of its own (`enforceOnGlance`).
 * Catches up on whatever the bus lost or forged: images made before the enforcer ran, a purged
 * queue, notifications turned off for a while, forged deletes.
 *
 * Projects go in sorted order. One project's failure is collected and the others go on; a pass
 * whose first FAILED_IN_A_ROW projects all fail stops there. A budget stops the run before a
 * project that would not fit; with `resume`, the next run starts after the last project done (a
 * run that dies half-way through a project does it again, which is harmless: reconcile is
 * idempotent). A complete pass ends with `Pipeline.prune`.
 *
 * @example
^ *   const summary = await reconcile(pipeline);                                  // the CLI, consume
 *   const run = await reconcile(pipeline, { budgetMs: 600_000, resume: true, remainingMs }); // the function
 */
export async function reconcile(pipeline: Pipeline, options: ReconcileOptions = {}): Promise<ReconcileSummary> {
  const started = pipeline.now();
  const failures: ProjectFailure[] = [];
  const failed = (projectId: string, err: unknown) => failures.push({ projectId, error: err instanceof Error ? err : new Error(String(err)) });
  const summary = (
    projects: EnforcementReport[],
    rest: Pick<ReconcileSummary, 'listed' | 'unreadable' | 'complete' | 'remaining' | 'cursor' | 'pruned'>,
  ): ReconcileSummary => ({
    projects,
    corrected: sumCorrected(projects),
    failures,
    ...rest,
    durationMs: pipeline.now() - started,
  });

  if (options.projectId) {
    // One project: its own listing is fresh, so the truth path decides and acts on it at once.
    const projectId = options.projectId;
    const projects: EnforcementReport[] = [];
    try {
      projects.push(await pipeline.enforceOnGlance(projectId));
    } catch (err) {
      failed(projectId, err);
    }
    options.onProgress?.(1, 1, projectId);
    return summary(projects, { listed: projects[0]?.usage.image_count_total ?? 0, unreadable: 0, complete: true, remaining: 0, cursor: '' });
  }

  // The budget is when to stop starting projects; the timeout (less a margin) is when nothing may
  // start at all, not even the first project of a run.
  const hardDeadline = started + (options.remainingMs?.() ?? Infinity) - TIMEOUT_MARGIN_MS;
  const deadline = Math.min(started + (options.budgetMs ?? Infinity), hardDeadline);
  const after = options.resume ? ((await pipeline.ledger.getState(RECONCILE_CURSOR)) ?? '') : '';

  const byProject = new Map<string, OwnedImage[]>();
  const everyId = new Set<string>();
  let listed = 0;
  let unreadable = 0;
  for await (const image of pipeline.listImages({ onUnreadable: () => void unreadable++ })) {
    // An image with no owner counts against no project, as in Glance's own quota.
    if (image.owner === null) continue;
    listed++;
    everyId.add(image.id);
    const list = byProject.get(image.owner) ?? [];
    list.push(image as OwnedImage);
    byProject.set(image.owner, list);
  }
  const pass = [...new Set([...byProject.keys(), ...(await pipeline.ledger.projects())])].sort();
  const todo = pass.filter((p) => p > after);

  const reports: EnforcementReport[] = [];
  let cursor = after;
  let done = 0;
  let slowest = 0;
  for (const projectId of todo) {
    const now = pipeline.now();
    // The first project of a run starts even past the budget (the listing may have used it up),
    // or a pass over a large cloud could never move.
    if (now >= hardDeadline || (done > 0 && now + slowest > deadline)) break;
    try {
      const judged: ProjectReport = await pipeline.applyListing(projectId, byProject.get(projectId) ?? [], started, everyId);
      reports.push(judged.toDelete.length > 0 ? await pipeline.enforceOnGlance(projectId) : { ...judged, actions: [] });
      // A failed project moves the cursor only with the next success: a run that dies after
      // failures alone resumes before them.
      cursor = projectId;
      if (options.resume) await pipeline.ledger.setState(RECONCILE_CURSOR, cursor);
    } catch (err) {
      failed(projectId, err);
    }
    slowest = Math.max(slowest, pipeline.now() - now);
    done++;
    options.onProgress?.(done, todo.length, projectId);
    if (reports.length === 0 && failures.length >= FAILED_IN_A_ROW) break;
  }

  const remaining = todo.length - done;
  if (remaining > 0) return summary(reports, { listed, unreadable, complete: false, remaining, cursor });
  if (options.resume) await pipeline.ledger.setState(RECONCILE_CURSOR, '');
  return summary(reports, { listed, unreadable, complete: true, remaining: 0, cursor: '', pruned: await pipeline.prune() });
}

function sumCorrected(reports: readonly ProjectReport[]): Partial<Record<CorrectionKind, number>> {
  const sum: Partial<Record<CorrectionKind, number>> = {};
  for (const r of reports) for (const [k, n] of Object.entries(r.corrected ?? {}) as [CorrectionKind, number][]) sum[k] = (sum[k] ?? 0) + n;
  return sum;
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
      await this.options.onSummary(await this.run());
      next = { failed: 0, inMs: this.options.intervalMs };
    } catch (err) {
      const delay = backoffMs(failedBefore + 1, 5_000, 300_000);
      this.options.onFailure(err, delay);
      next = { failed: failedBefore + 1, inMs: delay };
    }
    if (this.stopped || next.inMs <= 0) return;
    this.timer = setTimeout(() => (this.running = this.once(next.failed)), next.inMs);
  }
}
