/**
 * One `consume` process without OpenStack, for the integration tests and `bench:stores`:
 *
 *   node --import tsx test/support/consume-process.ts
 *
 * The same NotificationConsumer and Pipeline as `glance-quota-enforcer consume`, built by
 * `openRuntime(process.env)` (src/composition-root.ts), with the static limits (QUOTA_LIMITS) and no Glance:
 * the ledger is what is under test, and `enforce` is never called. Start it with many of these
 * on one queue and one STORE_URL to have many consumers share a ledger.
 *
 * Extra settings, for the harness only:
 * - CONSUME_PROCESS_EVALUATE=1: an EnforcementWorker decides for every project a batch touched,
 *   as `consume` does. Its limits must give no candidates (there is no Glance to verify them).
 * - CONSUME_PROCESS_WAIT_FOR_GO=1: open the store, say `ready`, and connect to the broker only
 *   when a line `go` arrives on stdin (a benchmark starts all its consumers at once).
 *
 * stdout is JSON lines, one per event, for the harness (test/support/consumers.ts):
 *   {"event":"ready"}        store open
 *   {"event":"connected"}    consuming
 *   {"event":"committed","messages":256,"applied":240,"duplicate":3,"ignored":13,"invalid":0}
 *                            one per batch, after it is committed to the store and acknowledged
 *   {"event":"stopped"}      after SIGTERM: in-flight batches committed and acked, store closed
 * Logs (pino, JSON) go to stderr. SIGTERM drains and exits 0.
 */
import { createInterface } from 'node:readline';
import { NotificationConsumer } from '../../src/doors/consume.js';
import { EnforcementWorker } from '../../src/pipeline/enforcement-worker.js';
import type { MessageResult } from '../../src/pipeline/index.js';
import { Metrics } from '../../src/metrics.js';
import { openRuntime } from '../../src/composition-root.js';

function say(event: string, detail: object = {}): void {
  process.stdout.write(`${JSON.stringify({ event, ...detail })}\n`);
}

// Static limits (QUOTA_LIMITS) and no Glance, whatever OS_* says: the ledger is under test.
const { config, log, pipeline, close } = await openRuntime(process.env, { overrides: { limits: (configured) => configured, glance: null } });
const metrics = new Metrics();
const worker = process.env.CONSUME_PROCESS_EVALUATE === '1' ? new EnforcementWorker(pipeline, log, metrics) : undefined;
const consumer = new NotificationConsumer({
  config,
  pipeline,
  log,
  metrics,
  onCommitted: (result) => {
    worker?.add(result.projects);
    const counts: Record<MessageResult, number> = { applied: 0, duplicate: 0, ignored: 0, invalid: 0 };
    for (const o of result.outcomes) counts[o.result]++;
    say('committed', { messages: result.outcomes.length, ...counts });
  },
});

let stopping: Promise<void> | undefined;
process.once('SIGTERM', () => {
  stopping = (async () => {
    await consumer.stop();
    await worker?.stop();
    await close();
    say('stopped');
  })();
});

say('ready', { pid: process.pid, store: pipeline.ledger.description });
if (process.env.CONSUME_PROCESS_WAIT_FOR_GO === '1') {
  const lines = createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => lines.on('line', (line) => line.trim() === 'go' && resolve()));
  lines.close();
}
const running = consumer.run();
void consumer.whenConnected().then(() => say('connected'));
try {
  await running;
} catch (err) {
  log.fatal({ err: (err as Error).message }, 'consumer failed');
  process.exit(1);
}
await stopping;
process.exit(0);
