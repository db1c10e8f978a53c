import { reconcile, type ReconcileSummary } from '../reconcile.js';
import { parseEvent, ScheduledEvent, type InvocationContext } from './events.js';
import { writeInvocationMetrics } from './metrics.js';
import { inInvocation, type FunctionServices } from './instance.js';

/**
 * The scheduled reconcile: the reconcile door (src/doors/reconcile.ts) within
 * RECONCILE_BUDGET_SECONDS and the invocation's remaining time, resuming where the last run
 * stopped. A pass over a whole cloud may take longer than one invocation may run; the pass's
 * state in the store (Glance's marker, the sweep's and the decisions' cursors) carries it over. A run in which nothing worked (Keystone, Glance or the store down)
 * fails the invocation, so that the alarm sees it; one failing project does not.
 *
 * @example
 *   export const handler = reconcileHandler(servicesFromEnvironment);
 */
export function reconcileHandler(services: () => Promise<FunctionServices>) {
  return (event: unknown, context?: InvocationContext): Promise<ReconcileSummary> =>
    inInvocation(context, async () => {
      parseEvent(ScheduledEvent, event, 'EventBridge schedule');
      const { pipeline, config, log, metrics } = await services();
      const remainingMs = context?.getRemainingTimeInMillis?.bind(context);
      let summary: ReconcileSummary;
      try {
        summary = await reconcile(pipeline, { budgetMs: config.reconcileBudgetMs, ...(remainingMs ? { remainingMs } : {}) });
      } catch (err) {
        // The pass listing failed: the next run starts it again.
        if (metrics) writeInvocationMetrics(metrics, 'reconcile', { enforcementErrors: 1 });
        throw err;
      }
      const { projects, failures, complete } = summary;
      if (metrics) writeInvocationMetrics(metrics, 'reconcile', { reports: projects, enforcementErrors: summary.decided === 0 && failures.length > 0 ? 1 : 0 });
      for (const f of failures) log.warn({ projectId: f.projectId, err: f.error.message }, 'reconcile of one project failed; the pass goes on');
      const actions = projects.reduce((n, r) => n + r.actions.length, 0);
      log.info(
        {
          pass: summary.passId,
          phase: summary.phase,
          decided: summary.decided,
          deferred: summary.deferred,
          complete,
          listed: summary.listed,
          corrected: summary.corrected,
          failed: failures.map((f) => f.projectId).slice(0, 20),
          actions,
          pruned: summary.pruned,
          ms: summary.durationMs,
        },
        complete
          ? 'reconcile pass complete'
          : summary.busy
            ? 'another run holds the reconcile pass; this one did nothing'
            : 'reconcile run stopped within its budget; the next run resumes',
      );
      // Nothing worked: not one project odd but a service down. The cursor stays where the last success left it.
      if (summary.decided === 0 && failures.length > 0) throw failures[0]!.error;
      return summary;
    });
}
