import type { EnforcementReport } from '../../pipeline.js';
import type { CorrectionKind } from '../../ledger/repair.js';
import { reconcile } from '../reconcile.js';
import { parseEvent, ScheduledEvent, type InvocationContext } from './events.js';
import { writeInvocationMetrics, type InvocationMetrics } from './metrics.js';
import { inInvocation, type FunctionServices } from './instance.js';

/** Where the scheduled reconcile keeps the last project it finished in the current pass. */
export const RECONCILE_CURSOR = 'reconcile.cursor';

/** A run whose first projects all fail stops after this many, and fails as a whole. */
const FAILED_IN_A_ROW = 3;

/** Kept free before the function's timeout: no project is started within it. */
export const TIMEOUT_MARGIN_MS = 30_000;

/** Audit records are kept this long, as `consume` keeps them. */

export interface BudgetedReconcileSummary {
  /** The projects reconciled in this run, in order. */
  projects: EnforcementReport[];
  /** Images Glance listed for them, and ledger images Glance no longer had. */
  listed: number;
  /** How Glance's listings corrected the ledger, by kind, and the projects that failed (the rest went on). */
  corrected: Partial<Record<CorrectionKind, number>>;
  failed: string[];
  /** The pass is finished: the next run starts again from the first project. */
  complete: boolean;
  /** Projects of the pass still to do after this run. */
  remaining: number;
  /** Where the next run resumes: after this project ('' when the pass is complete). */
  cursor: string;
  durationMs: number;
}

export interface BudgetOptions {
  /** Start no project after this long (RECONCILE_BUDGET_SECONDS). */
  budgetMs: number;
  /** Lambda's `context.getRemainingTimeInMillis`: no project is started within 30 s of the timeout. */
  remainingMs?: () => number;
  /** Milliseconds, injected by tests. */
  clock?: () => number;
}

/**
 * The reconcile of the CLI (`reconcile(pipeline, glance, { projectId })`: Glance's listing into
 * the ledger, then decide and act), project by project in sorted order, within a time budget. A
 * pass over every project may take longer than one invocation may run: the run stops starting
 * projects when the next one would not fit, and the cursor in the store (`RECONCILE_CURSOR`, set
 * after every project) makes the next run resume after the last project finished. A run that
 * dies half-way through a project does that project again next time, which is harmless: reconcile
 * is idempotent.
 *
 * Each run lists Glance's images once to learn which projects own any (with the ledger's own
 * projects, the pass); each project is then reconciled from a listing of its own.
 *
 * @example
 *   const summary = await reconcileWithinBudget(services, { budgetMs: 600_000, remainingMs: () => context.getRemainingTimeInMillis() });
 */
export async function reconcileWithinBudget(services: FunctionServices, options: BudgetOptions): Promise<BudgetedReconcileSummary> {
  const { pipeline, glance, log, config } = services;
  const clock = options.clock ?? Date.now;
  const started = clock();
  // The budget is when to stop starting projects; the timeout (less a margin) is when nothing
  // may start at all, not even the first project of a run.
  const hardDeadline = started + (options.remainingMs?.() ?? Infinity) - TIMEOUT_MARGIN_MS;
  const deadline = Math.min(started + options.budgetMs, hardDeadline);
  const after = (await pipeline.state(RECONCILE_CURSOR)) ?? '';

  const owners = new Set<string>();
  for await (const image of glance.listImages()) if (image.owner !== null) owners.add(image.owner);
  const pass = [...new Set([...owners, ...(await pipeline.projects())])].sort();
  const todo = pass.filter((p) => p > after);
  log.info({ projects: pass.length, resumeAfter: after || undefined, todo: todo.length, listingMs: clock() - started }, 'reconcile run starts');

  const reports: EnforcementReport[] = [];
  let listed = 0;
  const corrected: Partial<Record<CorrectionKind, number>> = {};
  const failed: string[] = [];
  let slowest = 0;
  let cursor = after;
  let done = 0;
  let firstFailure: Error | undefined;
  for (const projectId of todo) {
    const now = clock();
    // The first project of a run starts even past the budget (the pass listing may have used it
    // up), or a pass over a large cloud could never move.
    if (now >= hardDeadline || (done > 0 && now + slowest > deadline)) break;
    const summary = await reconcile(pipeline, glance, { projectId });
    slowest = Math.max(slowest, clock() - now);
    done++;
    if (summary.failures.length > 0) firstFailure ??= summary.failures[0]!.error;
    if (reports.length === 0 && summary.failures.length > 0 && done >= FAILED_IN_A_ROW) break;
    reports.push(...summary.projects);
    listed += summary.listed;
    for (const [k, n] of Object.entries(summary.corrected) as [CorrectionKind, number][]) corrected[k] = (corrected[k] ?? 0) + n;
    // One project failing is logged and left to the next pass; the others go on.
    for (const f of summary.failures) {
      failed.push(f.projectId);
      log.warn({ projectId: f.projectId, err: f.error.message }, 'reconcile of one project failed; the pass goes on');
    }
    // A failed project moves the cursor only with the next success: a run that dies after
    // failures alone resumes before them.
    if (summary.failures.length === 0) {
      cursor = projectId;
      await pipeline.setState(RECONCILE_CURSOR, cursor);
    }
  }

  if (firstFailure && reports.length === 0) {
    // Nothing worked: Glance or the store is down, not one project odd. Fail the invocation (the
    // alarm sees it) and keep the cursor where the last success left it.
    throw firstFailure;
  }
  const remaining = todo.length - done;
  const complete = remaining === 0;
  if (complete) {
    cursor = '';
    await pipeline.setState(RECONCILE_CURSOR, cursor);
    // Once per pass, as `consume` does after each full reconcile.
    await pipeline.forgetOld({ messagesMs: config.messageRetentionMs, actionsMs: config.auditRetentionMs, deadImagesMs: config.deletedImageRetentionMs });
  }
  const actions = reports.reduce((n, r) => n + r.actions.length, 0);
  const durationMs = clock() - started;
  log.info({ done, remaining, complete, cursor: cursor || undefined, listed, corrected, failed: failed.slice(0, 20), actions, ms: durationMs }, complete ? 'reconcile pass complete' : 'reconcile run stopped within its budget; the next run resumes');
  return { projects: reports, listed, corrected, failed, complete, remaining, cursor, durationMs };
}

/**
 * The Lambda handler for the `schedule` event, over services built once per instance.
 *
 * @example
 *   export const handler = reconcileHandler(servicesFromEnvironment);
 */
export function reconcileHandler(services: () => Promise<FunctionServices>) {
  return (event: unknown, context?: InvocationContext): Promise<BudgetedReconcileSummary> =>
    inInvocation(context, async () => {
      parseEvent(ScheduledEvent, event, 'EventBridge schedule');
      const s = await services();
      const remaining = context?.getRemainingTimeInMillis?.bind(context);
      const metrics = (m: InvocationMetrics) => s.metrics && writeInvocationMetrics(s.metrics, 'reconcile', m);
      try {
        const summary = await reconcileWithinBudget(s, { budgetMs: s.config.reconcileBudgetMs, ...(remaining ? { remainingMs: remaining } : {}) });
        metrics({ reports: summary.projects, enforcementErrors: 0 });
        return summary;
      } catch (err) {
        // The run stopped at a project (Keystone, Glance or the store down); the next run resumes there.
        metrics({ enforcementErrors: 1 });
        throw err;
      }
    });
}
