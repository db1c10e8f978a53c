/**
 * `consume` throughput per ledger store, with 1 and with 4 consumer processes, against the bare
 * amqplib drain rate of the same broker measured in the same run:
 *
 *   npm run bench:stores                                  # 50k messages
 *   npm run bench:stores -- --messages 20000 --only postgres,redis
 *   npm run bench:stores -- --rounds 3                    # medians of 3 rounds: about 6 minutes
 *   npm run bench:stores -- --ledger-only                 # no EnforcementWorker: the ledger writes alone
 *
 * Every row drains a queue pre-filled with the same realistic notifications (1% redelivered
 * duplicates). The consumers are real processes (test/support/consume-process.ts: the
 * NotificationConsumer and Pipeline of `consume`, static limits high enough that no image is a
 * candidate, an EnforcementWorker deciding every touched project, dry-run, no Glance). They open
 * their store first and are then started together; the clock runs from that start to the last
 * batch committed and acknowledged. SQLite runs with one consumer only: one file, one process.
 *
 * Needs RabbitMQ, and PostgreSQL and Redis for their rows (the machine's, or TEST_TRANSPORT_URL,
 * TEST_POSTGRES_URL, TEST_REDIS_URL). Queues, databases and keys are the bench's own and are
 * removed at the end.
 */
import { availableParallelism, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.js';
import { killAll, startConsumers, waitUntil, type ConsumerProcess } from '../test/support/consumers.js';
import { generateHistory, withDuplicates } from '../test/support/generate.js';
import { freshLedger, freshQueue, holdService, requireServices, type LedgerKind, type ServiceName, type TestQueue } from '../test/support/services.js';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '50000' },
    projects: { type: 'string', default: '1000' },
    /** consume's PREFETCH unless given. */
    prefetch: { type: 'string' },
    consumers: { type: 'string', default: '4' },
    only: { type: 'string', default: 'sqlite,postgres,redis' },
    seed: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '1' },
    'ledger-only': { type: 'boolean', default: false },
  },
});
const PREFETCH = loadConfig(args.prefetch ? { PREFETCH: args.prefetch } : {}).amqp.prefetch;
const MANY = Number(args.consumers);
const ROUNDS = Number(args.rounds);
const kinds = args.only.split(',').map((s) => s.trim()) as LedgerKind[];
for (const k of kinds) if (!['sqlite', 'postgres', 'redis'].includes(k)) throw new Error(`--only: unknown store '${k}'; use sqlite, postgres, redis`);

interface Row {
  name: string;
  consumers: number;
  /** The median over the rounds. */
  seconds: number;
  all: number[];
}

/** The baseline: the fastest one consumer drains this broker, acking each message, nothing else. */
async function bareDrain(queue: TestQueue, n: number): Promise<number> {
  const channel = await queue.connection.createChannel();
  await channel.prefetch(PREFETCH);
  const started = performance.now();
  let seen = 0;
  await new Promise<void>((resolve) => {
    void channel.consume(queue.queue, (msg) => {
      if (!msg) return;
      channel.ack(msg);
      if (++seen === n) resolve();
    });
  });
  const seconds = (performance.now() - started) / 1000;
  await channel.close();
  return seconds;
}

async function baseline(bodies: readonly string[]): Promise<number> {
  const queue = await freshQueue('bench-bare');
  try {
    await queue.publish(bodies);
    return await bareDrain(queue, bodies.length);
  } finally {
    await queue.delete();
  }
}

async function consumeRow(kind: LedgerKind, n: number, bodies: readonly string[]): Promise<number> {
  const release = kind === 'sqlite' ? () => {} : await holdService(kind);
  const ledger = await freshLedger(kind);
  const queue = await freshQueue(`bench-${kind}`);
  let consumers: ConsumerProcess[] = [];
  try {
    await queue.publish(bodies);
    consumers = await startConsumers(n, {
      ...queue.env,
      ...ledger.env,
      PREFETCH: String(PREFETCH),
      QUOTA_LIMITS: 'image_count_total=100000,image_size_total=10000000',
      ENFORCEMENT_MODE: 'dry-run',
      CONSUME_PROCESS_EVALUATE: args['ledger-only'] ? '0' : '1',
      CONSUME_PROCESS_WAIT_FOR_GO: '1',
    });
    const started = performance.now();
    for (const c of consumers) c.go();
    const committed = () => consumers.reduce((sum, c) => sum + c.committed, 0);
    await waitUntil(
      () => committed() >= bodies.length || consumers.some((c) => c.exit),
      600_000,
      () => `${bodies.length} messages committed (${committed()})`,
    );
    const crashed = consumers.find((c) => c.exit);
    if (crashed) throw new Error(`a consumer exited during the run:\n${crashed.tail()}`);
    const seconds = (Math.max(...consumers.map((c) => c.lastCommitAt).filter(Number.isFinite)) - started) / 1000;
    await Promise.all(consumers.map((c) => c.stop()));
    return seconds;
  } finally {
    await killAll(consumers);
    await queue.delete();
    await ledger.cleanUp();
    release();
  }
}

async function main(): Promise<void> {
  const services: ServiceName[] = ['rabbitmq', ...kinds.filter((k): k is 'postgres' | 'redis' => k !== 'sqlite')];
  await requireServices(...services);
  const history = generateHistory({ seed: Number(args.seed), projects: Number(args.projects), messages: Number(args.messages) }).bodies;
  const bodies = withDuplicates(history, 0.01, Number(args.seed));
  console.log(
    `bench:stores: ${bodies.length} realistic notifications (1% redelivered), ${args.projects} projects, PREFETCH=${PREFETCH}, ` +
      `${args['ledger-only'] ? 'ledger writes only' : 'ledger writes and evaluation'}, dry-run, ${availableParallelism()} cores, load ${loadavg()[0]!.toFixed(1)}`,
  );

  // Each round runs every row, the bare drain first; one more bare drain closes the run, so load
  // from a neighbour shows up as a spread between the bare runs. The table gives medians.
  const variants: { name: string; kind?: LedgerKind; consumers: number }[] = [{ name: 'bare amqplib (ack)', consumers: 1 }];
  for (const kind of kinds) for (const n of kind === 'sqlite' ? [1] : [1, MANY]) variants.push({ name: `consume (${kind})`, kind, consumers: n });
  const runs = new Map<string, number[]>(variants.map((v) => [`${v.name}/${v.consumers}`, []]));
  const measure = async (v: (typeof variants)[number], round: number) => {
    process.stdout.write(`  round ${round}: ${v.name} x${v.consumers} ...`);
    const seconds = v.kind ? await consumeRow(v.kind, v.consumers, bodies) : await baseline(bodies);
    process.stdout.write(` ${seconds.toFixed(2)} s\n`);
    runs.get(`${v.name}/${v.consumers}`)!.push(seconds);
  };
  for (let round = 1; round <= ROUNDS; round++) for (const v of variants) await measure(v, round);
  await measure(variants[0]!, ROUNDS);
  const median = (xs: number[]) => {
    const sorted = [...xs].sort((a, b) => a - b);
    const mid = sorted.length / 2;
    return Number.isInteger(mid) ? (sorted[mid - 1]! + sorted[mid]!) / 2 : sorted[Math.floor(mid)]!;
  };
  const rows: Row[] = variants.map((v) => ({ ...v, seconds: median(runs.get(`${v.name}/${v.consumers}`)!), all: runs.get(`${v.name}/${v.consumers}`)! }));
  const baseRate = bodies.length / rows[0]!.seconds;

  const rate = (r: Row) => bodies.length / r.seconds;
  console.log('');
  console.log(`${'variant'.padEnd(22)} ${'consumers'.padStart(9)} ${'seconds'.padStart(8)} ${'msg/s'.padStart(8)} ${'x bare'.padStart(7)}  runs (s)`);
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(22)} ${String(r.consumers).padStart(9)} ${r.seconds.toFixed(2).padStart(8)} ${String(Math.round(rate(r))).padStart(8)} ` +
        `${(rate(r) / baseRate).toFixed(2).padStart(7)}  ${r.all.map((x) => x.toFixed(2)).join(' ')}`,
    );
  }
  console.log(
    `load average at the end: ${loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
  for (const kind of kinds.filter((k) => k !== 'sqlite')) {
    const one = rows.find((r) => r.name === `consume (${kind})` && r.consumers === 1);
    const many = rows.find((r) => r.name === `consume (${kind})` && r.consumers === MANY);
    if (one && many) console.log(`${kind}: ${MANY} consumers / 1 consumer = ${(rate(many) / rate(one)).toFixed(2)}`);
  }
}

await main();
