/**
 * `consume` against a bare amqplib consumer, on the same broker in the same run:
 *
 *   npm run bench:consume                       # 100k messages
 *   npm run bench:consume -- --messages 20000   # quicker
 *
 * 1. drain, 1k projects: a queue pre-filled with N realistic notifications, drained by
 *    (a) a bare amqplib consumer that only acks each message (the old baseline);
 *    (b) the best bare consumer: decodes both JSON layers (envelope, then `oslo.message`) and
 *        acks in batches (`ack(multiple)` every PREFETCH/2), at the same PREFETCH as consume; run
 *        before and after (c), and the faster of the two counts, so the baseline is never flattered
 *        down by a noisy neighbour;
 *    (c) the enforcer's NotificationConsumer with the SQLite ledger in dry-run, acking only after
 *        each batch is committed, static limits; with `--stores sqlite,redis,postgres`, the same
 *        with each of those ledgers (a fresh Redis key prefix, a fresh PostgreSQL database);
 *    (d) the reference: oslo.messaging's own notification listener (bench/oslo-listener.py, Debian's
 *        python3-oslo.messaging) on the first `--oslo-messages` bodies, when it is installed.
 *    The figure is c/b (aim: >= 0.8); c/a is printed beside it. Each run also shows the CPU
 *    it cost a message, this process (all threads) / the broker (beam.smp, from /proc): on a
 *    shared 2-core machine the two share the cores, so what consume spends above the bare
 *    consumer is what the ratio loses.
 * 2. drain, 10k projects: the same with N bodies spread evenly over 10,000 projects (about 7.5k of
 *    them active in 100k bodies): the best bare consumer, consume with static limits, and consume
 *    with limits from Keystone unified limits, read from a counting Keystone stand-in on 127.0.0.1
 *    (test/support/keystone-standin.ts) holding a project limit for each project. Prints the
 *    Keystone calls made during the drain, and the time of one full limits refresh.
 * 3. lag: notifications published at a steady rate (half the measured drain rate), stamped with
 *    their publish time as Glance stamps them, by a publisher in a process of its own
 *    (bench/lag-publisher.ts; `--lag-publisher inline` runs it in this one, as before); p50/p99 of
 *    publish -> ledger commit, and of its two parts: publish -> receive (the broker's, which the
 *    best bare consumer's own lag at the same rate shows too) and receive -> commit (the
 *    enforcer's own).
 *
 * Needs RabbitMQ (TRANSPORT_URL, default the machine's guest@127.0.0.1:5672), and Redis and
 * PostgreSQL for their rows (TEST_REDIS_URL, TEST_POSTGRES_URL, as the tests). Queues, exchanges,
 * key prefixes and databases are the bench's own and are deleted at the end. `--sections` runs
 * some of 1-3 only (`drain`, `many`, `lag`).
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import amqp from 'amqplib';
import { loadConfig } from '../src/config.js';
import { NotificationConsumer } from '../src/doors/consume.js';
import { EnforcementWorker } from '../src/pipeline/enforcement-worker.js';
import { createLogger } from '../src/log.js';
import { Metrics } from '../src/metrics.js';
import { StaticLimits } from '../src/quota/static-limits.js';
import { parseLimits } from '../src/quota/limits.js';
import type { LedgerStore } from '../src/store/port.js';
import { parseTransportUrl } from '../src/transport/transport-url.js';
import { osloTimestampMicros } from '../src/notification/schema.js';
import { loadCredentials } from '../src/openstack/credentials.js';
import { KeystoneClient } from '../src/openstack/keystone.js';
import { keystoneLimitsReader } from '../src/openstack/keystone-limits.js';
import { UnifiedLimits } from '../src/openstack/limits.js';
import type { LimitSource } from '../src/quota/limits.js';
import { generateHistory, projectId } from '../test/support/generate.js';
import { publishAtRate, type PublisherArgs } from './lag-publisher.js';
import { keystoneStandIn, projectLimit, registeredLimit, type KeystoneStandIn } from '../test/support/keystone-standin.js';
import { pipelineOf } from '../src/composition-root.js';
import type { IngestResult } from '../src/pipeline/index.js';
import { freshLedger, holdService, requireServices, type LedgerKind } from '../test/support/services.js';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '100000' },
    projects: { type: 'string', default: '1000' },
    'many-projects': { type: 'string', default: '10000' },
    'lag-messages': { type: 'string', default: '20000' },
    /** The lag section's publish rate (msg/s); by default half the first consume drain's rate (10k without one). */
    'lag-rate': { type: 'string' },
    prefetch: { type: 'string' },
    /** The ledgers of the consume rows of the 1k-project drain, in order: sqlite, redis, postgres. */
    stores: { type: 'string', default: 'sqlite' },
    /** Which parts run: drain (1k projects), many (10k projects), lag. */
    sections: { type: 'string', default: 'drain,many,lag' },
    /** Where the lag section's publisher runs: `process` (its own, as Glance's is) or `inline` (this one). */
    'lag-publisher': { type: 'string', default: 'process' },
    /** Bodies for the reference row, oslo.messaging's own listener (it drains about 2k msg/s); 0 leaves the row out. */
    'oslo-messages': { type: 'string', default: '20000' },
    /** Write a V8 CPU profile of the first consume drain (1k projects) only, to this file. */
    'profile-consume': { type: 'string' },
  },
});
const N = Number(args.messages);
const STORES = args.stores.split(',').filter(Boolean) as LedgerKind[];
for (const k of STORES) if (!['sqlite', 'redis', 'postgres'].includes(k)) throw new Error(`bench: --stores: unknown store '${k}'; use sqlite, redis, postgres`);
const SECTIONS = new Set(args.sections.split(','));
for (const k of SECTIONS) if (!['drain', 'many', 'lag'].includes(k)) throw new Error(`bench: --sections: unknown section '${k}'; use drain, many, lag`);
if (!['process', 'inline'].includes(args['lag-publisher']))
  throw new Error(`bench: --lag-publisher: expected process or inline, got '${args['lag-publisher']}'`);
const LAG_N = Number(args['lag-messages']);
const OSLO_N = Number(args['oslo-messages']);
const MANY = Number(args['many-projects']);
const TRANSPORT_URL = process.env.TRANSPORT_URL ?? 'rabbit://guest:guest@127.0.0.1:5672/';
/** consume's PREFETCH (its default unless --prefetch), used by every bare consumer too. */
const PREFETCH = loadConfig(args.prefetch ? { PREFETCH: args.prefetch } : {}).amqp.prefetch;
const run = randomUUID().slice(0, 8);
const exchange = `gqe-bench-${run}`;

async function connect() {
  try {
    return await amqp.connect(parseTransportUrl(TRANSPORT_URL)[0]!);
  } catch (err) {
    throw new Error(
      `bench: RabbitMQ at ${TRANSPORT_URL.replace(/:[^:@/]*@/, ':***@')} is not reachable (${(err as Error).message}); start it with rabbitmq-server -detached`,
    );
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
  await channel.assertQueue(queue, {
    durable: true,
    arguments: { 'x-max-length': 1_000_000, 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': `${queue}.dead` },
  });
  await channel.assertQueue(`${queue}.dead`, { durable: true, arguments: { 'x-max-length': 1_000_000 } });
  await channel.bindQueue(queue, exchange, `${queue}.info`);
}

type BareWay = 'ack-each' | 'decode-batched';

/**
 * A bare amqplib consumer at consume's PREFETCH. `ack-each`: only acks each message.
 * `decode-batched`: the least any real consumer of these bodies does (both JSON layers decoded),
 * with the cheapest acking (one `ack(multiple)` per PREFETCH/2 messages); `onDecoded` sees each
 * decoded oslo message.
 */
async function bareDrain(
  connection: amqp.ChannelModel,
  queue: string,
  n: number,
  way: BareWay,
  onDecoded?: (message: Record<string, unknown>) => void,
): Promise<number> {
  const channel = await connection.createChannel();
  await channel.prefetch(PREFETCH);
  const ackEvery = Math.max(1, Math.floor(PREFETCH / 2));
  const started = performance.now();
  let seen = 0;
  let sinceAck = 0;
  let decoded = 0;
  await new Promise<void>((resolve) => {
    void channel.consume(queue, (msg) => {
      if (!msg) return;
      seen++;
      if (way === 'ack-each') {
        channel.ack(msg);
      } else {
        const envelope = JSON.parse(msg.content.toString('utf8')) as Record<string, unknown>;
        const message = typeof envelope['oslo.message'] === 'string' ? (JSON.parse(envelope['oslo.message']) as Record<string, unknown>) : envelope;
        if (typeof message.event_type === 'string') decoded++;
        onDecoded?.(message);
        if (++sinceAck === ackEvery || seen === n) {
          channel.ack(msg, true);
          sinceAck = 0;
        }
      }
      if (seen === n) resolve();
    });
  });
  const seconds = (performance.now() - started) / 1000;
  await channel.close();
  if (way === 'decode-batched' && decoded === 0) throw new Error('bench: the bare consumer decoded no event_type; the bodies are not Glance notifications');
  return seconds;
}

/**
 * The best bare consumer (bareDrain's `decode-batched`) receiving what `publish` sends: each
 * message's publish -> receive time (ms, sorted), from its oslo timestamp.
 */
async function bareLags(connection: amqp.ChannelModel, queue: string, n: number, publish: () => Promise<void>): Promise<number[]> {
  const lags: number[] = [];
  const drained = bareDrain(connection, queue, n, 'decode-batched', (message) => {
    const micros = typeof message.timestamp === 'string' ? osloTimestampMicros(message.timestamp) : undefined;
    if (micros !== undefined) lags.push(Date.now() - micros / 1000);
  });
  await publish();
  await drained;
  if (lags.length !== n) throw new Error(`bench: the bare lag consumer read ${lags.length} timestamps of ${n}`);
  return lags.sort((a, b) => a - b);
}

/**
 * NotificationConsumer noting when each delivery reached it, in delivery order. Batches are taken
 * from the front of its buffer and committed in order, so the k-th outcome committed is the k-th
 * delivery (the bench loses no channel, so nothing is redelivered).
 */
class TimedConsumer extends NotificationConsumer {
  readonly receivedAt: number[] = [];
  protected override deliver(msg: amqp.ConsumeMessage): void {
    this.receivedAt.push(Date.now());
    super.deliver(msg);
  }
}

function enforcer(
  queue: string,
  store: LedgerStore,
  onCommitted: (result: IngestResult, committedAtMs: number) => void,
  limits: LimitSource = HIGH_STATIC_LIMITS,
) {
  const config = loadConfig({
    TRANSPORT_URL,
    PREFETCH: String(PREFETCH),
    QUEUE_NAME: queue,
    NOTIFICATION_EXCHANGE: exchange,
    NOTIFICATION_TOPIC: queue,
    ENFORCEMENT_MODE: 'dry-run',
    LOG_LEVEL: 'warn',
  });
  const log = createLogger('warn');
  const metrics = new Metrics();
  const pipeline = pipelineOf({ store, limits, mode: 'dry-run', log });
  const worker = new EnforcementWorker(pipeline, log, metrics);
  const consumer = new TimedConsumer({
    config,
    pipeline,
    log,
    metrics,
    onCommitted: (r) => {
      // As `consume` does (src/commands/consume.ts).
      worker.add(r.projects);
      onCommitted(r, Date.now());
    },
  });
  return { consumer, worker };
}

/** A fresh ledger of `kind` (SQLite: a file in a temporary directory), opened in this process; `close` also deletes it. */
async function ledger(kind: LedgerKind): Promise<{ store: LedgerStore; close: () => Promise<void> }> {
  const release = kind === 'sqlite' ? () => {} : await holdService(kind);
  const fresh = await freshLedger(kind);
  const store = await fresh.open();
  return {
    store,
    close: async () => {
      await store.close();
      await fresh.cleanUp();
      release();
    },
  };
}

async function enforcerDrain(queue: string, kind: LedgerKind, n: number, limits?: LimitSource): Promise<number> {
  const { store, close } = await ledger(kind);
  let done = 0;
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  const e = enforcer(
    queue,
    store,
    (r) => {
      done += r.outcomes.length;
      if (done >= n) finish();
    },
    limits,
  );
  const running = e.consumer.run();
  await e.consumer.whenConnected();
  const started = performance.now();
  await finished;
  const seconds = (performance.now() - started) / 1000;
  await e.consumer.stop();
  await e.worker.stop();
  await running;
  await close();
  return seconds;
}

/** `run`, under the V8 profiler when `file` is given (`--cpu-prof` would profile the bare drains and the fills too). */
async function profiled<T>(file: string | undefined, run: () => Promise<T>): Promise<T> {
  if (!file) return run();
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  try {
    return await run();
  } finally {
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(file, JSON.stringify(profile));
    session.disconnect();
    console.log(`bench: CPU profile of the consume drain written to ${file}`);
  }
}

// Limits high enough that no image is a candidate: the bench has no Glance to verify against,
// but every touched project is still evaluated, as in production.
const HIGH = { image_count_total: 100_000, image_size_total: 10_000_000 };
const HIGH_STATIC_LIMITS = new StaticLimits(parseLimits(`image_count_total=${HIGH.image_count_total},image_size_total=${HIGH.image_size_total}`));

/** A Keystone stand-in holding HIGH as a project limit of each of `projects` projects, and the Keystone limits read from it. */
async function keystoneLimits(projects: number) {
  const standIn = await keystoneStandIn({
    registered: [registeredLimit('image_count_total', 100), registeredLimit('image_size_total', HIGH.image_size_total)],
    limits: Array.from({ length: projects }, (_, i) => projectLimit(projectId(i), 'image_count_total', HIGH.image_count_total)),
  });
  const log = createLogger('warn');
  const keystone = new KeystoneClient(loadCredentials(standIn.env, { searchDirs: [] }), { log });
  const limits = () => new UnifiedLimits(keystoneLimitsReader(keystone, { log }), { fallback: HIGH_STATIC_LIMITS, log });
  return { standIn, limits };
}

/** The broker's Erlang VM on this machine, if it runs here: its CPU time is read from /proc. */
function brokerPid(): number | undefined {
  try {
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      const comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      if (comm === 'beam.smp') return Number(pid);
    }
  } catch {
    // not Linux, or /proc not readable: the broker's share is then not reported
  }
  return undefined;
}

/** CPU seconds (user + system) of a process from /proc/PID/stat; undefined when unreadable. */
function processCpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return undefined;
  }
}

/** One drain: its seconds, and the CPU µs a message of this process (all threads) / the broker. */
interface Run {
  seconds: number;
  cpu: string;
}

/**
 * `run` (a drain of `n` messages, resolving to its seconds) with the CPU it cost, to show whose CPU
 * a drain spends. A drain by another process resolves to its seconds and that process's CPU seconds,
 * which then stand for this one's.
 */
async function metered(n: number, run: () => Promise<number | { seconds: number; cpuSeconds: number }>): Promise<Run> {
  const pid = brokerPid();
  const broker0 = processCpuSeconds(pid);
  const own0 = process.cpuUsage();
  const result = await run();
  const own = process.cpuUsage(own0);
  const broker1 = processCpuSeconds(pid);
  const { seconds, cpuSeconds } = typeof result === 'number' ? { seconds: result, cpuSeconds: (own.user + own.system) / 1e6 } : result;
  const ownUs = (cpuSeconds * 1e6) / n;
  const brokerUs = broker0 === undefined || broker1 === undefined ? undefined : ((broker1 - broker0) * 1e6) / n;
  return { seconds, cpu: `${ownUs.toFixed(0)}${brokerUs === undefined ? '' : `/${brokerUs.toFixed(0)}`}` };
}

/** The faster of two runs: the baseline a noisy neighbour cannot flatter. */
const faster = (a: Run, b: Run): Run => (a.seconds <= b.seconds ? a : b);

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

const LAG_SEED = 11;

/** bench/lag-publisher.ts as a child process; resolves when it has published (and had confirmed) every message. */
function publisherProcess(a: PublisherArgs): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./lag-publisher.ts', import.meta.url))], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, GQE_LAG_PUBLISHER: JSON.stringify(a) },
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`bench: the lag publisher exited with ${code}`))));
  });
}

/** Debian's python3, which has python3-oslo.messaging once the lab is installed. */
const OSLO_PYTHON = '/usr/bin/python3';

/** Why oslo.messaging's listener cannot run here, or undefined when it can. */
function osloMissing(): string | undefined {
  const probe = spawnSync(OSLO_PYTHON, ['-c', 'import oslo_messaging'], { encoding: 'utf8' });
  if (probe.status === 0) return undefined;
  return `${OSLO_PYTHON} cannot import oslo_messaging (${(probe.error?.message ?? probe.stderr.trim().split('\n').pop()) || `exit ${probe.status}`}); install python3-oslo.messaging (the lab does: bash test/e2e/lab.sh up)`;
}

/**
 * The reference row: bench/oslo-listener.py, oslo.messaging's notification listener with its
 * defaults, draining `n` bodies from `<topic>.info`, declared here as oslo declares it (not
 * durable, not auto-deleted, no arguments) and filled before it starts. Its CPU is the listener
 * process's own, as it reports it.
 */
async function osloDrain(channel: amqp.ConfirmChannel, topic: string, bodies: readonly string[]): Promise<Run> {
  const queue = `${topic}.info`;
  await channel.assertQueue(queue, { durable: false, autoDelete: false });
  await channel.bindQueue(queue, exchange, queue);
  await fill(channel, topic, bodies);
  return metered(bodies.length, () => osloListener(topic, bodies.length));
}

/** bench/oslo-listener.py draining `count` messages of `<topic>.info`: its seconds and CPU seconds. */
async function osloListener(topic: string, count: number): Promise<{ seconds: number; cpuSeconds: number }> {
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn(OSLO_PYTHON, [fileURLToPath(new URL('./oslo-listener.py', import.meta.url))], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, GQE_OSLO_LISTENER: JSON.stringify({ url: TRANSPORT_URL, exchange, topic, count, timeoutSeconds: Math.max(60, count / 200) }) },
    });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`bench: bench/oslo-listener.py exited with ${code}`))));
  });
  return JSON.parse(out.trim().split('\n').pop()!) as { seconds: number; cpuSeconds: number };
}

async function main(): Promise<void> {
  await requireServices('rabbitmq', ...STORES.filter((k): k is 'redis' | 'postgres' => k !== 'sqlite'));
  const connection = await connect();
  const channel = await connection.createConfirmChannel();
  await channel.assertExchange(exchange, 'topic', { durable: false, autoDelete: false });
  const q = (name: string) => `${exchange}-${name}`;
  const queues: string[] = [];
  let standIn: KeystoneStandIn | undefined;
  const lines: string[] = [];
  const row = (name: string, run: Run, runs: Run[] = [run], n = N) =>
    `${name.padEnd(44)} ${String(n).padStart(8)} ${run.seconds.toFixed(2).padStart(8)} ${String(Math.round(n / run.seconds)).padStart(9)}  ${runs.map((r) => `${r.seconds.toFixed(2)} (${r.cpu})`).join(' ')}`;
  try {
    const { bodies } = generateHistory({ seed: 7, projects: Number(args.projects), messages: N });
    console.log(
      `bench:consume: ${N} realistic notifications, ${args.projects} projects, then ${MANY} projects; PREFETCH=${PREFETCH}, ${STORES.join(', ')} ledger, dry-run, load ${loadavg()[0]!.toFixed(1)}`,
    );
    const drain = async (name: string, list: readonly string[], how: BareWay | { store?: LedgerKind; limits?: LimitSource; profile?: string }) => {
      queues.push(q(name));
      await declare(channel, q(name));
      await fill(channel, q(name), list);
      return metered(list.length, () =>
        typeof how === 'string'
          ? bareDrain(connection, q(name), list.length, how)
          : profiled(how.profile, () => enforcerDrain(q(name), how.store ?? 'sqlite', list.length, how.limits)),
      );
    };

    let drainRate: number | undefined;
    if (SECTIONS.has('drain')) {
      const ackEach = await drain('ack-each', bodies, 'ack-each');
      const best1 = await drain('best-1', bodies, 'decode-batched');
      const consumed: [LedgerKind, Run][] = [];
      for (const [i, store] of STORES.entries()) {
        consumed.push([
          store,
          await drain(`enforcer-${store}`, bodies, { store, ...(i === 0 && args['profile-consume'] ? { profile: args['profile-consume'] } : {}) }),
        ]);
      }
      const best2 = await drain('best-2', bodies, 'decode-batched');
      const best = faster(best1, best2);
      drainRate = N / consumed[0]![1].seconds;
      lines.push(row(`bare amqplib, ack each (${args.projects} projects)`, ackEach));
      lines.push(row(`bare amqplib, decode + batched acks (best)`, best, [best1, best2]));
      for (const [store, run] of consumed) lines.push(row(`consume (${store}, static limits)`, run));
      for (const [store, { seconds }] of consumed) {
        lines.push(
          `ratio consume (${store}) / best bare: ${(best.seconds / seconds).toFixed(2)}${store === 'sqlite' ? ' (aim >= 0.8)' : ''}; consume / ack-each bare: ${(ackEach.seconds / seconds).toFixed(2)}`,
        );
      }
      if (OSLO_N > 0) {
        const missing = osloMissing();
        if (missing) {
          lines.push(`oslo.messaging notification listener: not run: ${missing}`);
        } else {
          const oslo = bodies.slice(0, OSLO_N);
          queues.push(`${q('oslo')}.info`);
          const run = await osloDrain(channel, q('oslo'), oslo);
          lines.push(row('oslo.messaging listener (python3, threading)', run, [run], oslo.length));
          lines.push(`consume (${STORES[0]}) / oslo.messaging listener, in msg/s: ${(N / consumed[0]![1].seconds / (oslo.length / run.seconds)).toFixed(1)}x`);
        }
      }
    }

    if (SECTIONS.has('many')) {
      // Many active projects, limits from Keystone: the same drains on bodies spread evenly over MANY projects.
      const many = generateHistory({ seed: 13, projects: MANY, messages: N, projectSkew: 0 }).bodies;
      const active = new Set(many.map((b) => /\\"owner\\": \\"([^\\]*)\\"/.exec(b)?.[1]).filter(Boolean)).size;
      const keystone = await keystoneLimits(MANY);
      standIn = keystone.standIn;
      const manyBest1 = await drain('many-best-1', many, 'decode-batched');
      const manyStatic = await drain('many-static', many, {});
      const manyEnf = await drain('many-enforcer', many, { limits: keystone.limits() });
      const calls = { ...standIn.calls };
      const manyBest2 = await drain('many-best-2', many, 'decode-batched');
      const manyBest = faster(manyBest1, manyBest2);
      // One read of the whole table, from cold (the token is the client's, already issued).
      standIn.resetCalls();
      const refreshStarted = performance.now();
      await keystone.limits().limitsFor(projectId(0));
      const refreshMs = performance.now() - refreshStarted;
      const refreshCalls = { ...standIn.calls };
      lines.push(row(`bare amqplib, decode + batched acks, ${MANY} pr.`, manyBest, [manyBest1, manyBest2]));
      lines.push(row(`consume (sqlite, static limits), ${MANY} pr.`, manyStatic));
      lines.push(row(`consume (sqlite, Keystone limits), ${MANY} pr.`, manyEnf));
      lines.push(
        `${MANY} projects (${active} active): consume / best bare: ${(manyBest.seconds / manyStatic.seconds).toFixed(2)} static limits, ${(manyBest.seconds / manyEnf.seconds).toFixed(2)} Keystone limits; Keystone calls during the drain: ` +
          `${calls.tokens} token, ${calls.registeredLimits} registered_limits, ${calls.limits} limits listing, ${calls.limitsOfOneProject} per-project limits; ` +
          `one refresh of ${MANY} projects' limits: ${refreshCalls.registeredLimits + refreshCalls.limits} calls, ${refreshMs.toFixed(0)} ms`,
      );
    }

    if (SECTIONS.has('lag')) {
      // Lag at a steady rate well under the drain rate, so it measures the pipeline, not a backlog.
      const rate = args['lag-rate'] ? Number(args['lag-rate']) : Math.max(500, Math.floor((drainRate ?? 10_000) * 0.5));
      const publish = async (queue: string) => {
        const routingKey = `${queue}.info`;
        if (args['lag-publisher'] === 'inline') {
          const lagBodies = generateHistory({ seed: LAG_SEED, projects: Number(args.projects), messages: LAG_N }).bodies;
          await publishAtRate(channel, exchange, routingKey, lagBodies, rate);
        } else {
          await publisherProcess({
            broker: parseTransportUrl(TRANSPORT_URL)[0]!,
            exchange,
            routingKey,
            rate,
            count: LAG_N,
            projects: Number(args.projects),
            seed: LAG_SEED,
          });
        }
      };
      const publisher = args['lag-publisher'] === 'inline' ? 'in this process' : 'in a process of its own';

      // The broker's own share: the best bare consumer's publish -> receive at the same rate.
      queues.push(q('lag-bare'));
      await declare(channel, q('lag-bare'));
      const bare = await bareLags(connection, q('lag-bare'), LAG_N, () => publish(q('lag-bare')));
      lines.push(
        `lag publish -> receive, best bare consumer, at ${rate} msg/s (${bare.length} messages, publisher ${publisher}): p50 ${percentile(bare, 50).toFixed(1)} ms, p99 ${percentile(bare, 99).toFixed(1)} ms`,
      );

      // Per image event: publish -> commit, and its two parts, publish -> receive (the broker's,
      // as the bare consumer saw it) and receive -> commit (the enforcer's own).
      const lags: number[] = [];
      const toReceive: number[] = [];
      const toCommit: number[] = [];
      let done = 0;
      let finish!: () => void;
      const finished = new Promise<void>((r) => (finish = r));
      queues.push(q('lag'));
      await declare(channel, q('lag'));
      const { store, close } = await ledger('sqlite');
      const e = enforcer(q('lag'), store, (r, committedAt) => {
        r.outcomes.forEach((o, i) => {
          if (!o.event) return;
          const published = o.event.timestamp / 1000;
          const received = e.consumer.receivedAt[done + i]!;
          lags.push(committedAt - published);
          toReceive.push(received - published);
          toCommit.push(committedAt - received);
        });
        done += r.outcomes.length;
        if (done >= LAG_N) finish();
      });
      const running = e.consumer.run();
      await e.consumer.whenConnected();
      await publish(q('lag'));
      await finished;
      await e.consumer.stop();
      await e.worker.stop();
      await running;
      await close();
      if (e.consumer.receivedAt.length !== LAG_N)
        throw new Error(
          `bench: consume received ${e.consumer.receivedAt.length} deliveries of ${LAG_N}; one was redelivered, and the receive times no longer line up`,
        );
      const p = (xs: number[]) => {
        xs.sort((a, b) => a - b);
        return `p50 ${percentile(xs, 50).toFixed(1)} ms, p99 ${percentile(xs, 99).toFixed(1)} ms`;
      };
      lines.push(`lag publish -> commit at ${rate} msg/s (${lags.length} image events, publisher ${publisher}): ${p(lags)}`);
      lines.push(`  of which publish -> receive ${p(toReceive)}; receive -> commit (the enforcer's own) ${p(toCommit)}`);
    }

    console.log(
      `${'variant'.padEnd(44)} ${'messages'.padStart(8)} ${'seconds'.padStart(8)} ${'msg/s'.padStart(9)}  runs: seconds (CPU µs a message: this process/broker)`,
    );
    for (const line of lines) console.log(line);
    console.log(
      `load average at the end: ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
    );
  } finally {
    await standIn?.close();
    for (const name of queues) {
      await channel.deleteQueue(name).catch(() => {});
      await channel.deleteQueue(`${name}.dead`).catch(() => {});
    }
    await channel.deleteExchange(exchange).catch(() => {});
    await connection.close().catch(() => {});
  }
}

await main();
