import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ConfigError } from './errors.js';
import type { Metrics } from './metrics.js';
import type { LimitSource } from './quota/limits.js';
import { settlesWithin } from './retry.js';

export interface HealthChecks {
  /** Connected to the broker and the store answers. */
  ready(): Promise<{ ok: boolean; detail: Record<string, string> }>;
}

/** `/healthz` (the process serves), `/readyz` (broker and store reachable), `/metrics` (Prometheus). */
export async function startHealthServer(
  listen: { port: number; host: string },
  metrics: Metrics,
  checks: HealthChecks,
): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const reply = (status: number, type: string, body: string) => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    if (path === '/healthz') return reply(200, 'text/plain', 'ok\n');
    if (path === '/readyz') {
      checks.ready().then(
        (r) => reply(r.ok ? 200 : 503, 'application/json', JSON.stringify(r.detail) + '\n'),
        (err: Error) => reply(503, 'application/json', JSON.stringify({ error: err.message }) + '\n'),
      );
      return;
    }
    if (path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => reply(200, metrics.registry.contentType, text),
        (err: Error) => reply(500, 'text/plain', err.message),
      );
      return;
    }
    reply(404, 'text/plain', 'not found: try /healthz, /readyz or /metrics\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      // With host networking another exporter may hold the port; say which setting moves ours.
      const why = err.code === 'EADDRINUSE' ? 'is already in use' : err.code === 'EADDRNOTAVAIL' ? 'is not an address of this host' : `failed (${err.message})`;
      reject(
        new ConfigError(
          `METRICS_HOST/METRICS_PORT: listening on ${listen.host}:${listen.port} ${why}; set METRICS_PORT to a free port (0 picks one) or METRICS_HOST to one of this host's addresses`,
        ),
      );
    });
    server.listen(listen.port, listen.host, () => resolve());
  });
  return { server, port: (server.address() as AddressInfo).port };
}

/**
 * `consume`'s `/readyz`: the store answers within 5 s (one that does not is failing, as one that
 * errs), the broker is connected, the limits source answers (while it fails nothing is deleted),
 * and no batch has been held past STALL_SECONDS, so that a
 * consumer stuck on the broker or the store is seen, and restarted, instead of looking healthy.
 */
export function consumerReadiness(o: {
  storeAnswers: () => Promise<unknown>;
  connected: () => boolean;
  batchHeldMs: () => number;
  stallMs: number;
  /** The limits source, by its own status (a source without one, static limits, is always trusted): while it fails, nothing is deleted, and the consumer says so. */
  limits?: Pick<LimitSource, 'status'>;
}): HealthChecks {
  return {
    ready: async () => {
      let storeOk = false;
      await settlesWithin(
        o.storeAnswers().then(
          () => {
            storeOk = true;
          },
          () => {},
        ),
        5_000,
      );
      const connected = o.connected();
      const heldMs = o.batchHeldMs();
      const stalled = heldMs > o.stallMs;
      const limits = o.limits?.status?.() ?? { trusted: true, detail: 'static' };
      return {
        ok: storeOk && connected && !stalled && limits.trusted,
        detail: {
          limits: limits.detail,
          broker: connected ? 'connected' : 'disconnected',
          store: storeOk ? 'ok' : 'failing',
          batch: stalled ? `stalled: in hand for ${Math.round(heldMs / 1000)} s, over STALL_SECONDS (${o.stallMs / 1000})` : 'flowing',
        },
      };
    },
  };
}
