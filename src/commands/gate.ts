import { parseArgs } from 'node:util';
import { admissionGateOf, openRuntime } from '../composition-root.js';
import { startAdmissionServer } from '../doors/admission-http.js';
import { ConfigError } from '../errors.js';
import { startHealthServer } from '../health.js';
import { Metrics } from '../metrics.js';
import { settlesWithin } from '../retry.js';
import { storeScheme } from '../store/index.js';

/** The gate's port when ADMISSION_PORT is unset: next to METRICS_PORT's 10920. */
export const DEFAULT_GATE_PORT = 10921;

/**
 * `glance-quota-enforcer gate`: the admission endpoint alone, over the ledger that consumers keep
 * (PostgreSQL or Redis, shared; SQLite on the consumer's host), so that as many gates as there are
 * proxies can run beside any number of consumers. `/healthz`, `/readyz` (the store answers) and
 * `/metrics` on METRICS_PORT. SIGTERM closes the listener and exits 0.
 */
export async function gate(args: string[]): Promise<number> {
  parseArgs({ args, options: {} });
  const metrics = new Metrics();
  const runtime = await openRuntime(process.env, {
    needGlance: true,
    check: (config) => {
      // Nothing feeds a memory ledger in this process: every project would look empty forever.
      if (storeScheme(config.storeUrl) === 'memory')
        throw new ConfigError(
          "STORE_URL: gate reads the ledger that consume keeps; memory:// holds nothing here. Use the consumers' postgres://, redis:// or sqlite:// ledger",
        );
    },
    onCorrections: (_projectId, corrections) => metrics.countCorrections(corrections),
    onAction: (a) => void metrics.actions.inc({ action: a.action }),
  });
  const { config, log, pipeline } = runtime;
  const admission = admissionGateOf(runtime, (answer, seconds) => metrics.countAdmission(answer, seconds));
  const listen = { port: config.admission.port ?? DEFAULT_GATE_PORT, host: config.admission.host };
  const endpoint = await startAdmissionServer(admission, listen);
  const health = await startHealthServer({ port: config.metricsPort, host: config.metricsHost }, metrics, {
    ready: async () => {
      let storeOk = false;
      await settlesWithin(
        pipeline.ledger.usage('readiness-probe').then(
          () => {
            storeOk = true;
          },
          () => {},
        ),
        5_000,
      );
      return { ok: storeOk, detail: { store: storeOk ? 'ok' : 'failing' } };
    },
  });
  log.info(
    {
      host: listen.host,
      port: endpoint.port,
      metricsPort: health.port,
      store: pipeline.ledger.description,
      fail: config.admission.failClosed ? 'closed' : 'open',
    },
    'admission endpoint listening',
  );
  await new Promise<void>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => resolve());
  });
  log.info('stopping');
  // The proxy holds keep-alive connections open: idle ones go now, the rest once answered.
  const closed = Promise.all([endpoint.server, health.server].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  endpoint.server.closeIdleConnections();
  health.server.closeAllConnections();
  if (!(await settlesWithin(closed, config.shutdownMs / 2))) endpoint.server.closeAllConnections();
  await settlesWithin(runtime.close(), config.shutdownMs / 2);
  log.info('stopped');
  return 0;
}
