/**
 * `consume` against a bare amqplib consumer, on the same broker in the same run:
 *
 *   npm run bench:consume                       # 100k messages
 *   npm run bench:consume -- --messages 20000   # quicker
 *
 * 1. drain: a queue pre-filled with N realistic notifications, drained by (a) a bare amqplib
 *    consumer that only acks, the baseline, and (b) the enforcer's NotificationConsumer with the
 *    SQLite ledger in dry-run, acking only after each batch is committed. The ratio b/a is the
 *    figure (aim: >= 0.6).
 * 2. lag: notifications published at a steady rate (half the measured drain rate), stamped with
 *    their publish time as Glance stamps them; p50/p99 of publish -> ledger commit.
 *
 * Needs RabbitMQ (TRANSPORT_URL, default the machine's guest@127.0.0.1:5672). Queues and exchanges
 * are the bench's own and are deleted at the end.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import amqp from 'amqplib';
import { loadConfig } from '../src/config.js';
import { NotificationConsumer, EnforcementWorker } from '../src/consume.js';
import { Pipeline } from '../src/enforcer.js';
import { createLogger } from '../src/log.js';
import { Metrics } from '../src/metrics.js';
import { StaticLimits } from '../src/quota/static-limits.js';
import { parseLimits } from '../src/quota/limits.js';
import { SqliteStore } from '../src/store/sqlite.js';
import { parseTransportUrl } from '../src/transport/transport-url.js';
import { generateHistory, osloTimestamp } from '../test/support/generate.js';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '100000' },
    projects: { type: 'string', default: '1000' },
    'lag-messages': { type: 'string', default: '20000' },
  },
});
const N = Number(args.messages);
const LAG_N = Number(args['lag-messages']);
const TRANSPORT_URL = process.env.TRANSPORT_URL ?? 'rabbit://guest:guest@127.0.0.1:5672/';
const run = randomUUID().slice(0, 8);
const exchange = `gqe-bench-${run}`;

async function connect() {
  try {
    return await amqp.connect(parseTransportUrl(TRANSPORT_URL)[0]!);
  } catch (err) {
    throw new Error(`bench: RabbitMQ at ${TRANSPORT_URL.replace(/:[^:@/]*@/, ':***@')} is not reachable (${(err as Error).message}); start it with rabbitmq-server -detached`);
  }
}

async function fill(channel: amqp.ConfirmChannel, queue: string, bodies: readonly string[]): Promise<void> {
  for (let i = 0; i < bodies.length; i++) {
    channel.publish(exchange, `${queue}.info`, Buffer.from(bodies[i]!), { contentType: 'application/json', deliveryMode: 2 });
    if (i % 5000 === 4999) await channel.waitForConfirms();
  }
  await channel.waitForConfirms();
}

async function declare(channel: amqp.Channel, queue: string): Promise<void> {
  await channel.assertQueue(queue, { durable: true, arguments: { 'x-max-length': 1_000_000, 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': `${queue}.dead` } });
  await channel.assertQueue(`${queue}.dead`, { durable: true, arguments: { 'x-max-length': 1_000_000 } });
  await channel.bindQueue(queue, exchange, `${queue}.info`);
}

/** The baseline: the fastest a consumer can go on this broker, acking each message, nothing else. */
async function bareDrain(connection: amqp.ChannelModel, queue: string, n: number): Promise<number> {
  const channel = await connection.createChannel();
  await channel.prefetch(256);
  const started = performance.now();
  let seen = 0;
  await new Promise<void>((resolve) => {
    void channel.consume(queue, (msg) => {
      if (!msg) return;
      channel.ack(msg);
      if (++seen === n) resolve();
    });
  });
  const seconds = (performance.now() - started) / 1000;
  await channel.close();
  return seconds;
}

function enforcer(queue: string, dir: string, onCommitted: (committed: number, lagsMs: number[]) => void) {
  const config = loadConfig({
    TRANSPORT_URL,
    QUEUE_NAME: queue,
    NOTIFICATION_EXCHANGE: exchange,
    NOTIFICATION_TOPIC: queue,
    ENFORCEMENT_MODE: 'dry-run',
    LOG_LEVEL: 'warn',
  });
  const log = createLogger('warn');
  const metrics = new Metrics();
  const store = SqliteStore.open(join(dir, `${queue}.db`));
  // Limits high enough that no image is a candidate: the bench has no Glance to verify against,
  // but every touched project is still evaluated, as in production.
  const pipeline = new Pipeline({ store, limits: new StaticLimits(parseLimits('image_count_total=100000,image_size_total=10000000')), mode: 'dry-run', log });
  const worker = new EnforcementWorker(pipeline, log, metrics);
  const consumer = new NotificationConsumer({
    config,
    pipeline,
    log,
    metrics,
    onCommitted: (r) => {
      worker.add(r.projects);
      const now = Date.now();
      const lags: number[] = [];
      for (const o of r.outcomes) if (o.event) lags.push(now - o.event.timestamp / 1000);
      onCommitted(r.outcomes.length, lags);
    },
  });
  return { consumer, worker, store };
}

async function enforcerDrain(queue: string, dir: string, n: number): Promise<number> {
  let done = 0;
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  const e = enforcer(queue, dir, (k) => {
    done += k;
    if (done >= n) finish();
  });
  const running = e.consumer.run();
  await e.consumer.whenConnected();
  const started = performance.now();
  await finished;
  const seconds = (performance.now() - started) / 1000;
  await e.consumer.stop();
  await e.worker.stop();
  await running;
  await e.store.close();
  return seconds;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Re-stamp a body with the current time, as Glance stamps a notification when it sends it. */
function stamp(body: string, nowMs: number): string {
  return body.replace(/\\"timestamp\\": \\"[^\\]*\\"/, `\\"timestamp\\": \\"${osloTimestamp(nowMs * 1000)}\\"`);
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'gqe-bench-consume-'));
  const connection = await connect();
  const channel = await connection.createConfirmChannel();
  await channel.assertExchange(exchange, 'topic', { durable: false, autoDelete: false });
  const queues = [`${exchange}-bare`, `${exchange}-enforcer`, `${exchange}-lag`];
  try {
    const { bodies } = generateHistory({ seed: 7, projects: Number(args.projects), messages: N });
    console.log(`bench:consume: ${N} realistic notifications, ${args.projects} projects, SQLite ledger, dry-run`);
    for (const q of queues) await declare(channel, q);

    await fill(channel, queues[0]!, bodies);
    const bare = await bareDrain(connection, queues[0]!, N);
    await fill(channel, queues[1]!, bodies);
    const enf = await enforcerDrain(queues[1]!, dir, N);

    // Lag at a steady rate well under the drain rate, so it measures the pipeline, not a backlog.
    const rate = Math.max(500, Math.floor((N / enf) * 0.5));
    const lags: number[] = [];
    let done = 0;
    let finish!: () => void;
    const finished = new Promise<void>((r) => (finish = r));
    const e = enforcer(queues[2]!, dir, (k, l) => {
      lags.push(...l);
      done += k;
      if (done >= LAG_N) finish();
    });
    const running = e.consumer.run();
    await e.consumer.whenConnected();
    const lagBodies = generateHistory({ seed: 11, projects: Number(args.projects), messages: LAG_N }).bodies;
    const t0 = performance.now();
    for (let i = 0; i < lagBodies.length; i++) {
      const due = t0 + (i / rate) * 1000;
      const wait = due - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      channel.publish(exchange, `${queues[2]}.info`, Buffer.from(stamp(lagBodies[i]!, Date.now())), { contentType: 'application/json', deliveryMode: 2 });
      if (i % 1000 === 999) await channel.waitForConfirms();
    }
    await finished;
    await e.consumer.stop();
    await e.worker.stop();
    await running;
    await e.store.close();
    lags.sort((a, b) => a - b);

    const row = (name: string, seconds: number) => `${name.padEnd(22)} ${String(N).padStart(8)} ${seconds.toFixed(2).padStart(8)} ${String(Math.round(N / seconds)).padStart(9)}`;
    console.log(`${'variant'.padEnd(22)} ${'messages'.padStart(8)} ${'seconds'.padStart(8)} ${'msg/s'.padStart(9)}`);
    console.log(row('bare amqplib (ack)', bare));
    console.log(row('consume (sqlite)', enf));
    console.log(`ratio consume / bare: ${(bare / enf).toFixed(2)}  (aim >= 0.6)`);
    console.log(`lag publish -> commit at ${rate} msg/s (${lags.length} image events): p50 ${percentile(lags, 50).toFixed(1)} ms, p99 ${percentile(lags, 99).toFixed(1)} ms`);
  } finally {
    for (const q of queues) {
      await channel.deleteQueue(q).catch(() => {});
      await channel.deleteQueue(`${q}.dead`).catch(() => {});
    }
    await channel.deleteExchange(exchange).catch(() => {});
    await connection.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
