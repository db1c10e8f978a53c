/**
 * Throughput of the whole path a consumer runs, parse -> ledger -> decision, through `Pipeline`
 * exactly as a door drives it: ingest a batch of raw bodies (one atomic store write), then
 * evaluate every project the batch touched.
 *
 *   npm run bench                                   # 200k messages, 1k projects, 3 rounds
 *   npm run bench -- --messages 50000 --rounds 1    # quicker
 *   node --cpu-prof --import tsx bench/pipeline.ts --only sqlite-rate --rounds 1
 *
 * Every figure comes with a baseline measured in the same process on the same bodies (two
 * JSON.parse per body and nothing else), so runs on a noisy shared machine compare by ratio.
 * See bench/README.md.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseLimits, type ProjectLimits } from '../src/quota/limits.js';
import { StaticLimits } from '../src/quota/static-limits.js';
import { MemoryStore } from '../src/store/memory.js';
import type { LedgerStore } from '../src/store/port.js';
import { SqliteStore } from '../src/store/sqlite.js';
import { generateHistory, withDuplicates } from '../test/support/generate.js';
import { pipelineOf } from '../src/composition-root.js';
import { Metrics } from '../src/metrics.js';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '200000' },
    projects: { type: 'string', default: '1000' },
    rounds: { type: 'string', default: '3' },
    batch: { type: 'string', default: '1000' },
    duplicates: { type: 'string', default: '0.01' },
    seed: { type: 'string', default: '1' },
    /** Comma-separated variant names (see VARIANTS); the baseline always runs. */
    only: { type: 'string' },
  },
});

function positive(name: string, value: string | undefined): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`bench: --${name} must be a positive number, got '${value}'`);
  return n;
}

const MESSAGES = positive('messages', args.messages);
const PROJECTS = positive('projects', args.projects);
const ROUNDS = positive('rounds', args.rounds);
const BATCH = positive('batch', args.batch);
const DUPLICATES = Number(args.duplicates);
const SEED = positive('seed', args.seed);

/** Realistic limits: Glance's registered defaults of the lab, plus our create-rate rule. */
const COUNT_AND_SIZE = 'image_count_total=100,image_size_total=10240';
const WITH_RATE = `${COUNT_AND_SIZE},image_create_rate=20/60s`;

interface RunStats {
  seconds: number;
  /** Of `seconds`: in `ingest` (parse + ledger write) and in `evaluate` (usage + decision). */
  ingestSeconds: number;
  evaluateSeconds: number;
  outcomes: Record<string, number>;
  evaluations: number;
  overReports: number;
}

interface Variant {
  name: string;
  what: string;
  run(bodies: readonly string[]): Promise<RunStats>;
}

async function drive(store: LedgerStore, limits: ProjectLimits, bodies: readonly string[], metrics?: Metrics): Promise<RunStats> {
  const pipeline = pipelineOf({ store, limits: new StaticLimits(limits), ...(metrics ? { onDecision: (r) => metrics.observeDecision(r) } : {}) });
  const outcomes: Record<string, number> = {};
  let evaluations = 0;
  let overReports = 0;
  let ingestNs = 0n;
  const start = process.hrtime.bigint();
  for (let i = 0; i < bodies.length; i += BATCH) {
    const t0 = process.hrtime.bigint();
    const result = await pipeline.ingest(bodies.slice(i, i + BATCH));
    ingestNs += process.hrtime.bigint() - t0;
    for (const o of result.outcomes) outcomes[o.result] = (outcomes[o.result] ?? 0) + 1;
    for (const project of result.projects) {
      const report = await pipeline.evaluate(project);
      evaluations++;
      if (report.over.length > 0) overReports++;
    }
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const ingestSeconds = Number(ingestNs) / 1e9;
  return { seconds, ingestSeconds, evaluateSeconds: seconds - ingestSeconds, outcomes, evaluations, overReports };
}

function memoryVariant(name: string, limitsText: string): Variant {
  return {
    name,
    what: `MemoryStore, ${limitsText}`,
    run: (bodies) => drive(new MemoryStore(), parseLimits(limitsText), bodies),
  };
}

/** As `consume` runs: every decision feeds the bounded per-project gauges (METRICS_PROJECTS=100). */
function gaugesVariant(name: string, limitsText: string): Variant {
  return {
    name,
    what: `MemoryStore, ${limitsText}, every decision into the per-project gauges (100 projects kept)`,
    run: (bodies) => drive(new MemoryStore(), parseLimits(limitsText), bodies, new Metrics({ projects: 100 })),
  };
}

function sqliteVariant(name: string, limitsText: string): Variant {
  return {
    name,
    what: `SqliteStore (temp file, WAL, one transaction per batch), ${limitsText}`,
    async run(bodies) {
      const dir = mkdtempSync(join(tmpdir(), 'gqe-bench-'));
      const store = SqliteStore.open(join(dir, 'ledger.db'));
      try {
        return await drive(store, parseLimits(limitsText), bodies);
      } finally {
        await store.close();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** The floor: what decoding the two JSON layers alone costs on this machine, right now. */
const BASELINE: Variant = {
  name: 'baseline',
  what: 'JSON.parse of each body twice (envelope, then oslo.message); nothing else',
  async run(bodies) {
    let sink = 0;
    const start = process.hrtime.bigint();
    for (const body of bodies) {
      const envelope = JSON.parse(body) as Record<string, string>;
      const message = JSON.parse(envelope['oslo.message']!) as { event_type: string };
      sink += message.event_type.length;
    }
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    if (sink === 0) throw new Error('baseline: nothing was decoded');
    return { seconds, ingestSeconds: seconds, evaluateSeconds: 0, outcomes: {}, evaluations: 0, overReports: 0 };
  },
};

const VARIANTS: Variant[] = [
  memoryVariant('memory', COUNT_AND_SIZE),
  memoryVariant('memory-rate', WITH_RATE),
  gaugesVariant('memory-gauges', COUNT_AND_SIZE),
  sqliteVariant('sqlite', COUNT_AND_SIZE),
  sqliteVariant('sqlite-rate', WITH_RATE),
];

/**
 * The aims (memory >= 100k msg/s, SQLite >= 30k msg/s on a 2-core dev machine) as times
 * over the JSON.parse baseline, which is what compares between machines and runs: on the machine
 * the aims were set on (bench/README.md, 2026-11-26) the baseline ran 178.6k msg/s, so 100k msg/s
 * is 1.79x the baseline's time and 30k msg/s is 5.95x.
 */
const BASELINE_WHEN_AIMED = 178_617;
const AIMS: Record<string, number> = { memory: 100_000, 'memory-rate': 100_000, sqlite: 30_000, 'sqlite-rate': 30_000 };
const aimTimes = (rate: number) => BASELINE_WHEN_AIMED / rate;

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** "72/28": percent of the time in ingest vs in evaluate. */
function split(ingestShare: number): string {
  const i = Math.round(ingestShare * 100);
  return `${i}/${100 - i}`;
}

function pad(text: string | number, width: number, left = false): string {
  const s = String(text);
  return left ? s.padEnd(width) : s.padStart(width);
}

async function main(): Promise<void> {
  const selected = args.only ? args.only.split(',').map((s) => s.trim()) : VARIANTS.map((v) => v.name);
  for (const name of selected) {
    if (!VARIANTS.some((v) => v.name === name)) {
      throw new Error(`bench: --only: unknown variant '${name}'; known: ${VARIANTS.map((v) => v.name).join(', ')}`);
    }
  }
  const variants = [BASELINE, ...VARIANTS.filter((v) => selected.includes(v.name))];

  const cpu = cpus();
  console.log(`node ${process.version}, ${cpu.length} cores (${cpu[0]?.model ?? 'unknown cpu'}), ${process.platform}`);
  const genStart = performance.now();
  const history = generateHistory({ seed: SEED, projects: PROJECTS, messages: MESSAGES });
  const bodies = DUPLICATES > 0 ? withDuplicates(history.bodies, DUPLICATES, SEED + 1) : history.bodies;
  const genSeconds = (performance.now() - genStart) / 1000;
  const mix = Object.entries(history.eventCounts)
    .sort((a, b) => b[1] - a[1])
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  console.log(
    `generated ${MESSAGES} messages over ${PROJECTS} projects in ${genSeconds.toFixed(1)} s, ` +
      `+${bodies.length - MESSAGES} redelivered duplicates = ${bodies.length} bodies; batches of ${BATCH}`,
  );
  console.log(`event mix: ${mix}`);

  // Warm-up: JIT every path (and let V8 settle the bodies' memory) before anything is timed.
  const warm = bodies.slice(0, Math.min(bodies.length, 20_000));
  await BASELINE.run(bodies);
  for (const v of variants) await v.run(warm);

  // Rounds interleave the variants, so a burst of load from a neighbour hits all of them alike.
  const seconds = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  const stats = new Map<string, RunStats>();
  const ingestShare = new Map<string, number[]>(variants.map((v) => [v.name, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const v of variants) {
      const s = await v.run(bodies);
      seconds.get(v.name)!.push(s.seconds);
      ingestShare.get(v.name)!.push(s.ingestSeconds / s.seconds);
      stats.set(v.name, s);
    }
    process.stderr.write(`round ${round}/${ROUNDS} done\n`);
  }

  const baseline = median(seconds.get(BASELINE.name)!);
  console.log('');
  console.log(
    `${pad('variant', 12, true)} ${pad('messages', 9)} ${pad('seconds', 8)} ${pad('msg/s', 9)} ${pad('x baseline', 10)} ` +
      `${pad('ingest/eval', 11)}  ${pad('rounds (s)', 22, true)} aim`,
  );
  for (const v of variants) {
    const all = seconds.get(v.name)!;
    const s = median(all);
    const rate = bodies.length / s;
    const aim = AIMS[v.name];
    const verdict =
      aim === undefined
        ? ''
        : `${s / baseline <= aimTimes(aim) ? 'met' : 'MISSED'} (<= ${aimTimes(aim).toFixed(2)}x baseline, i.e. ${aim / 1000}k msg/s; ${rate >= aim ? 'met' : 'missed'} here in msg/s)`;
    console.log(
      `${pad(v.name, 12, true)} ${pad(bodies.length, 9)} ${pad(s.toFixed(3), 8)} ${pad(Math.round(rate), 9)} ` +
        `${pad((s / baseline).toFixed(2), 10)} ${pad(v === BASELINE ? '' : split(median(ingestShare.get(v.name)!)), 11)}  ` +
        `${pad(all.map((x) => x.toFixed(2)).join(' '), 22, true)} ${verdict}`,
    );
  }
  console.log('');
  for (const v of variants) {
    const s = stats.get(v.name)!;
    if (v === BASELINE) {
      console.log(`${v.name}: ${v.what}`);
      continue;
    }
    const outcomes = Object.entries(s.outcomes)
      .map(([k, n]) => `${k} ${n}`)
      .join(', ');
    console.log(`${v.name}: ${v.what}; ${outcomes}; ${s.evaluations} evaluations, ${s.overReports} over quota`);
  }
}

await main();
