import { parseArgs } from 'node:util';
import { admissionGateOf, openRuntime } from '../composition-root.js';
import { startAdmissionServer } from '../doors/admission-http.js';
import { NotificationConsumer } from '../doors/consume.js';
import { EnforcementWorker } from '../pipeline/enforcement-worker.js';
import { reconcile, ReconcileSchedule } from '../doors/reconcile.js';
import { NearestProjects } from '../quota/nearest.js';
import { consumerReadiness, startHealthServer } from '../health.js';
import { Metrics } from '../metrics.js';
import { settlesWithin } from '../retry.js';
import { Notifier, QuotaNotifications } from '../transport/notifier.js';

/**
 * `glance-quota-enforcer consume`, the long-lived enforcer: the consume door (deliveries -> the
 * pipeline -> acks), the enforcement worker for the projects each batch changed, the reconcile door
 * on its schedule, `/healthz` `/readyz` `/metrics`, and the notifications the enforcer publishes,
 * all around the one pipeline the composition root builds. SIGTERM drains within SHUTDOWN_SECONDS.
 */
export async function consume(args: string[]): Promise<number> {
  parseArgs({ args, options: {} });
  let notifications: QuotaNotifications | undefined;
  // The callbacks first run once the pipeline works, after `metrics` below exists.
  const runtime = await openRuntime(process.env, {
    needGlance: true,
    onCorrections: (_projectId, corrections) => metrics.countCorrections(corrections),
    onDecision: (report) => metrics.observeDecision(report),
    onAction: async (a) => {
      metrics.actions.inc({ action: a.action });
      await notifications?.action(a);
    },
  });
  const { config, log, pipeline } = runtime;
  const metrics = new Metrics({ projects: config.metricsProjects });
  metrics.watchLimits(runtime.limits);
  // Readiness (and gqe_limits_trusted) say from the start whether Keystone's limits can be read,
  // not only once some project has been decided: a cloud with no image yet decides none. Any
  // project id reads the whole table; a failure is the source's to report through its status.
  void runtime.limits.limitsFor('readiness').catch(() => {});
  const publishing = config.amqp.publishExchange
    ? new Notifier(config.amqp.publishExchange, config.amqp.publishTopic, config.amqp.durableExchange, log)
    : undefined;
  notifications = new QuotaNotifications(publishing, () => pipeline.mode);
  const announce = notifications;

  const worker = new EnforcementWorker(pipeline, log, metrics, (report) => announce.report(report), {
    projectsAtOnce: config.enforceProjects,
    maxAttempts: config.enforceMaxAttempts,
  });
  // Reconcile acts itself, on Glance's listing; the worker is for what the bus triggers.
  // The nearest projects of the pass in hand, for the gauges once it is complete: bounded like them.
  let pass = new NearestProjects(config.metricsProjects);
  const runPass = () => {
    pass = new NearestProjects(config.metricsProjects);
    return reconcile(pipeline, { onReport: (report) => void pass.observe(report), onDeferred: (projectId) => worker.add([projectId]) });
  };
  const schedule = new ReconcileSchedule(runPass, {
    intervalMs: config.reconcileIntervalMs,
    onSummary: async (s) => {
      metrics.reconcileDuration.observe(s.durationMs / 1000);
      metrics.reconcileRuns.inc({ result: s.busy ? 'busy' : s.failures.length > 0 || !s.complete ? 'partial' : 'ok' });
      // A whole pass saw every project: the gauges become exactly its nearest (a cut pass saw only some).
      if (s.complete) metrics.observePass(pass.list(), new Set(s.failures.map((f) => f.projectId)));
      for (const f of s.failures) metrics.countOpenStackError(f.error);
      log.info(
        {
          pass: s.passId,
          decided: s.decided,
          deferred: s.deferred,
          busy: s.busy,
          listed: s.listed,
          corrected: s.corrected,
          unreadable: s.unreadable,
          failed: s.failures.map((f) => f.projectId).slice(0, 20),
          pruned: s.pruned,
          ms: s.durationMs,
        },
        'reconciled from Glance',
      );
      for (const report of s.projects) await announce.report(report);
    },
    onFailure: (err, retryInMs) => {
      metrics.reconcileRuns.inc({ result: 'failed' });
      metrics.countOpenStackError(err);
      log.warn({ err: (err as Error).message, retryInMs }, 'reconcile failed; will retry');
    },
  });
  let connections = 0;
  const consumer = new NotificationConsumer({
    config,
    pipeline,
    log,
    metrics,
    onCommitted: (result) => worker.add(result.projects),
    onConnected: async (connection) => {
      await announce.attach(connection);
      // After a broker restart, Glance's non-durable exchange (and our binding to it) was gone for
      // a while: what Glance published then reached no queue. A reconcile recovers it.
      if (++connections > 1) schedule.soon();
    },
  });
  const health = await startHealthServer(
    { port: config.metricsPort, host: config.metricsHost },
    metrics,
    consumerReadiness({
      storeAnswers: () => pipeline.ledger.usage('readiness-probe'),
      connected: () => consumer.isConnected,
      batchHeldMs: () => consumer.batchHeldMs(),
      stallMs: config.stallMs,
      limits: runtime.limits,
    }),
  );
  log.info({ host: config.metricsHost, port: health.port, mode: pipeline.mode, store: pipeline.ledger.description }, 'health and metrics listening');
  // ADMISSION_PORT: the admission endpoint in this process, over this consumer's ledger.
  const admission =
    config.admission.port === undefined
      ? undefined
      : await startAdmissionServer(
          admissionGateOf(runtime, (answer, seconds) => metrics.countAdmission(answer, seconds)),
          { port: config.admission.port, host: config.admission.host },
        );
  if (admission)
    log.info({ host: config.admission.host, port: admission.port, fail: config.admission.failClosed ? 'closed' : 'open' }, 'admission endpoint listening');
  schedule.start();

  // SIGTERM within SHUTDOWN_SECONDS: a container platform kills the process after its grace
  // period, so every step has a share of the budget and what does not fit is abandoned (the
  // broker redelivers what was not acknowledged; the reconcile at start finds the backlog).
  let stopping: Promise<void> | undefined;
  const stop = (signal: string) =>
    (stopping ??= (async () => {
      const deadline = Date.now() + config.shutdownMs;
      const left = (reserveMs = 0) => Math.max(0, deadline - Date.now() - reserveMs);
      // Whatever still holds the event loop at the deadline (a Glance call in flight) does not
      // keep the process: it exits 0, everything that matters being acknowledged or redelivered.
      setTimeout(() => {
        log.warn({ shutdownMs: config.shutdownMs }, 'SHUTDOWN_SECONDS reached; exiting with work abandoned');
        process.exit(0);
      }, config.shutdownMs).unref();
      log.info({ signal, shutdownMs: config.shutdownMs }, 'stopping: draining in-flight messages');
      const reconciling = schedule.stop();
      const stoppingWorker = worker.stop(left(1_000) / 2);
      await consumer.stop(left(1_000) * 0.7);
      await stoppingWorker;
      if (!(await settlesWithin(reconciling, left(500)))) log.warn('reconcile in progress abandoned; the next start runs it again');
      admission?.server.closeAllConnections();
      admission?.server.close();
      health.server.closeAllConnections?.();
      await settlesWithin(new Promise<void>((resolve) => health.server.close(() => resolve())), left(300));
      await settlesWithin(runtime.close(), left());
      log.info('stopped');
    })());
  const signalled = new Promise<void>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => void stop(sig).then(resolve));
  });
  try {
    await consumer.run();
  } catch (err) {
    // A configuration error (406 on the exchange, a bad TRANSPORT_URL): nothing to retry.
    await stop('error');
    throw err;
  }
  await signalled;
  return 0;
}
