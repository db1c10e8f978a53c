import { parseArgs } from 'node:util';
import { EnforcementWorker, NotificationConsumer, backoffMs } from './consume.js';
import type { EnforcementReport } from './enforcer.js';
import { startHealthServer } from './health.js';
import { Metrics } from './metrics.js';
import { reconcile } from './reconcile.js';
import { openRuntime } from './runtime.js';
import type { ActionRecord } from './store/port.js';
import { Notifier } from './transport/notifier.js';

const EVENT_OF: Record<ActionRecord['action'], string> = {
  deleted: 'quota_enforcer.image.deleted',
  'would-delete': 'quota_enforcer.image.would_delete',
  skipped: 'quota_enforcer.image.skipped',
  'not-deletable': 'quota_enforcer.image.not_deletable',
  gone: 'quota_enforcer.image.gone',
};

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
  // Only projects over a limit now are kept, so the map is bounded by them, not by every project
  // (forged ones included) ever seen.
  const lastOver = new Map<string, string>();
  const onReport = async (report: EnforcementReport) => {
    const key = report.over.join(',');
    if ((lastOver.get(report.projectId) ?? '') === key) return;
    if (key) lastOver.set(report.projectId, key);
    else lastOver.delete(report.projectId);
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
      const storeOk = await store.usage('readiness-probe').then(() => true, () => false);
      const ok = storeOk && consumer.isConnected;
      return { ok, detail: { broker: consumer.isConnected ? 'connected' : 'disconnected', store: storeOk ? 'ok' : 'failing' } };
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

  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping: draining in-flight messages');
    clearTimeout(reconcileTimer);
    await consumer.stop();
    await worker.stop();
    await reconciling?.catch(() => {});
    await new Promise<void>((resolve) => health.server.close(() => resolve()));
    await runtime.close();
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
