import { parseArgs } from 'node:util';
import { EnforcementWorker, NotificationConsumer, settlesWithin } from '../doors/consume.js';
import { backoffMs } from '../retry.js';
import type { EnforcementReport } from '../pipeline.js';
import { startHealthServer } from '../health.js';
import { Metrics } from '../metrics.js';
import { reconcile } from '../doors/reconcile.js';
import { openRuntime } from '../composition-root.js';
import type { ActionRecord } from '../store/port.js';
import { Notifier } from '../transport/notifier.js';

const EVENT_OF: Record<ActionRecord['action'], string> = {
  deleted: 'quota_enforcer.image.deleted',
  'would-delete': 'quota_enforcer.image.would_delete',
  skipped: 'quota_enforcer.image.skipped',
  'not-deletable': 'quota_enforcer.image.not_deletable',
  gone: 'quota_enforcer.image.gone',
};

/**
 * The last set of exceeded resources announced per project, for the projects seen most recently:
 * project ids come from the bus, so the map is bounded (least recently reported first out). A
 * project pushed out only has its next limit.exceeded sent again.
 */
export class LastOver {
  private readonly map = new Map<string, string>();
  constructor(private readonly max = 10_000) {}

  /** Records `key` for the project; true when it differs from the last one recorded. */
  changed(projectId: string, key: string): boolean {
    const last = this.map.get(projectId) ?? '';
    this.map.delete(projectId);
    if (key) this.map.set(projectId, key); // '' is the default: a project under its limits takes no room
    while (this.map.size > this.max) this.map.delete(this.map.keys().next().value!);
    return last !== key;
  }

  get size(): number {
    return this.map.size;
  }
}

/**
 * `glance-quota-enforcer consume`: wires the consumer, the enforcement worker, the periodic
 * reconcile, the health server and the outgoing notifications around one pipeline.
 */
export async function consume(args: string[]): Promise<number> {
  parseArgs({ args, options: {} });
  const metrics = new Metrics();
  let notifier: Notifier | undefined;
  const runtime = await openRuntime(process.env, {
    needGlance: true,
    onCorrections: (_projectId, corrections) => metrics.countCorrections(corrections),
    onAction: async (a) => {
      metrics.actions.inc({ action: a.action });
      await notifier?.publish(EVENT_OF[a.action], 'INFO', {
        project_id: a.projectId,
        image_id: a.imageId,
        action: a.action,
        reason: a.reason,
        mode: runtime.pipeline.mode,
        over: a.over,
        usage: a.usage,
        limits: a.limits,
      });
    },
  });
  const { config, log, pipeline, store } = runtime;
  if (config.amqp.publishExchange) notifier = new Notifier(config.amqp.publishExchange, config.amqp.publishTopic, config.amqp.durableExchange, log);

  // limit.exceeded is sent when a project's set of exceeded resources changes, not on every message.
  const lastOver = new LastOver();
  const onReport = async (report: EnforcementReport) => {
    const key = report.over.join(',');
    if (!lastOver.changed(report.projectId, key)) return;
    if (key) {
      await notifier?.publish('quota_enforcer.limit.exceeded', 'WARN', {
        project_id: report.projectId, over: report.over, usage: report.usage, limits: report.limits, exempt: report.exempt, mode: pipeline.mode,
      });
    }
  };
  const worker = new EnforcementWorker(pipeline, log, metrics, onReport);
  const consumer = new NotificationConsumer({
    config,
    pipeline,
    log,
    metrics,
    onCommitted: (r) => worker.add(pipeline.projectsAfter(r)),
    onConnected: async (connection) => {
      await notifier?.attach(connection);
      // After a broker restart, Glance's non-durable exchange (and our binding to it) was gone for
      // a while: what Glance published then reached no queue. A reconcile recovers it.
      if (++connections > 1 && !stopping) void reconcileSoon();
    },
  });
  let connections = 0;

  const health = await startHealthServer({ port: config.metricsPort, host: config.metricsHost }, metrics, {
    ready: async () => {
      // A store that does not answer in 5 s is failing, as one that errs.
      let storeOk = false;
      await settlesWithin(store.usage('readiness-probe').then(() => void (storeOk = true), () => {}), 5_000);
      const heldMs = consumer.batchHeldMs();
      const stalled = heldMs > config.stallMs;
      const ok = storeOk && consumer.isConnected && !stalled;
      return {
        ok,
        detail: {
          broker: consumer.isConnected ? 'connected' : 'disconnected',
          store: storeOk ? 'ok' : 'failing',
          batch: stalled ? `stalled: in hand for ${Math.round(heldMs / 1000)} s, over STALL_SECONDS (${config.stallMs / 1000})` : 'flowing',
        },
      };
    },
  });
  log.info({ host: config.metricsHost, port: health.port, mode: pipeline.mode, store: store.description }, 'health and metrics listening');

  let stopping = false;
  let reconcileTimer: NodeJS.Timeout | undefined;
  let reconciling: Promise<void> | undefined;
  const reconcileOnce = async (attempt = 0): Promise<void> => {
    const end = metrics.reconcileDuration.startTimer();
    try {
      // Reconcile acts itself, on Glance's listing; the worker is for what the bus triggers.
      const summary = await reconcile(pipeline, runtime.glance!);
      end();
      metrics.reconcileRuns.inc({ result: summary.failures.length > 0 ? 'partial' : 'ok' });
      for (const f of summary.failures) metrics.countOpenStackError(f.error);
      log.info({ projects: summary.projects.length, listed: summary.listed, corrected: summary.corrected, unreadable: summary.unreadable, failed: summary.failures.map((f) => f.projectId).slice(0, 20), ms: summary.durationMs }, 'reconciled from Glance');
      for (const report of summary.projects) await onReport(report);
      await pipeline.forgetOld({ messagesMs: config.messageRetentionMs, actionsMs: config.auditRetentionMs, deadImagesMs: config.deletedImageRetentionMs });
    } catch (err) {
      metrics.reconcileRuns.inc({ result: 'failed' });
      metrics.countOpenStackError(err);
      const delay = backoffMs(attempt + 1, 5_000, 300_000);
      log.warn({ err: (err as Error).message, retryInMs: delay }, 'reconcile failed; will retry');
      if (!stopping) reconcileTimer = setTimeout(() => (reconciling = reconcileOnce(attempt + 1)), delay);
      return;
    }
    if (!stopping && config.reconcileIntervalMs > 0) reconcileTimer = setTimeout(() => (reconciling = reconcileOnce()), config.reconcileIntervalMs);
  };
  const reconcileSoon = async () => {
    await reconciling?.catch(() => {});
    if (stopping) return;
    clearTimeout(reconcileTimer);
    reconciling = reconcileOnce();
  };
  reconciling = reconcileOnce();

  // SIGTERM within SHUTDOWN_SECONDS: a container platform kills the process after its grace
  // period, so every step has a share of the budget and what does not fit is abandoned (the
  // broker redelivers what was not acknowledged; the reconcile at start finds the backlog).
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    const deadline = Date.now() + config.shutdownMs;
    const left = (reserveMs = 0) => Math.max(0, deadline - Date.now() - reserveMs);
    // Whatever still holds the event loop at the deadline (a Glance call in flight) does not
    // keep the process: it exits 0, everything that matters being acknowledged or redelivered.
    setTimeout(() => {
      log.warn({ shutdownMs: config.shutdownMs }, 'SHUTDOWN_SECONDS reached; exiting with work abandoned');
      process.exit(0);
    }, config.shutdownMs).unref();
    log.info({ signal, shutdownMs: config.shutdownMs }, 'stopping: draining in-flight messages');
    clearTimeout(reconcileTimer);
    const stoppingWorker = worker.stop(left(1_000) / 2);
    await consumer.stop(left(1_000) * 0.7);
    await stoppingWorker;
    if (!(await settlesWithin(reconciling, left(500)))) log.warn('reconcile in progress abandoned; the next start runs it again');
    health.server.closeAllConnections?.();
    await settlesWithin(new Promise<void>((resolve) => health.server.close(() => resolve())), left(300));
    await settlesWithin(runtime.close(), left());
    log.info('stopped');
  };
  let stopped: Promise<void> = new Promise<void>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => void stop(sig).then(resolve));
  });
  try {
    await consumer.run();
  } catch (err) {
    // A configuration error (406 on the exchange, a bad TRANSPORT_URL): nothing to retry.
    stopped = stop('error');
    await stopped;
    throw err;
  }
  await stopped;
  return 0;
}
