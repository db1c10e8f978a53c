import type { EnforcementReport } from '../enforcer.js';
import { reconcile } from '../reconcile.js';
import { parseEvent, ScheduledEvent, type InvocationContext } from './events.js';
import { writeInvocationMetrics, type InvocationMetrics } from './metrics.js';
import { inInvocation, type FunctionServices } from './runtime.js';

/** Where the scheduled reconcile keeps the last project it finished in the current pass. */
export const RECONCILE_CURSOR = 'reconcile.cursor';

/** Kept free before the function's timeout: no project is started within it. */
export const TIMEOUT_MARGIN_MS = 30_000;

/** Audit records are kept this long, as `consume` keeps them. */

export interface BudgetedReconcileSummary {
  /** The projects reconciled in this run, in order. */
  projects: EnforcementReport[];
  /** Images Glance listed for them, and ledger images Glance no longer had. */
  listed: number;
  vanished: number;
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
  const after = (await pipeline.store.getState(RECONCILE_CURSOR)) ?? '';

  const owners = new Set<string>();
  for await (const image of glance.listImages()) if (image.owner !== null) owners.add(image.owner);
  const pass = [...new Set([...owners, ...(await pipeline.store.projects())])].sort();
  const todo = pass.filter((p) => p > after);
  log.info({ projects: pass.length, resumeAfter: after || undefined, todo: todo.length, listingMs: clock() - started }, 'reconcile run starts');

  const reports: EnforcementReport[] = [];
  let listed = 0;
  let vanished = 0;
  let slowest = 0;
  let cursor = after;
  for (const projectId of todo) {
    const now = clock();
    // The first project of a run starts even past the budget (the pass listing may have used it
    // up), or a pass over a large cloud could never move.
    if (now >= hardDeadline || (reports.length > 0 && now + slowest > deadline)) break;
    const summary = await reconcile(pipeline, glance, { projectId });
    slowest = Math.max(slowest, clock() - now);
    reports.push(...summary.projects);
    listed += summary.listed;
    vanished += summary.vanished;
    cursor = projectId;
    await pipeline.store.setState(RECONCILE_CURSOR, cursor);
  }

  const remaining = todo.length - reports.length;
  const complete = remaining === 0;
  if (complete) {
    cursor = '';
    await pipeline.store.setState(RECONCILE_CURSOR, cursor);
    // Once per pass, as `consume` does after each full reconcile.
    await pipeline.forgetOld({ messagesMs: config.messageRetentionMs, actionsMs: config.auditRetentionMs });
  }
  const actions = reports.reduce((n, r) => n + r.actions.length, 0);
  const durationMs = clock() - started;
  log.info({ done: reports.length, remaining, complete, cursor: cursor || undefined, listed, vanished, actions, ms: durationMs }, complete ? 'reconcile pass complete' : 'reconcile run stopped within its budget; the next run resumes');
  return { projects: reports, listed, vanished, complete, remaining, cursor, durationMs };
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
