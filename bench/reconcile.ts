/**
 * What reconciling a whole cloud costs: wall time and peak RSS of the real CLI's `reconcile` (a
 * child process, the embedded SQLite ledger in a temp dir) over a made-up Glance of N queued
 * images, 5 a project (test/support/cloud-glance.ts, in a child process of its own so that its CPU
 * is not the enforcer's), beside two baselines in the same run: a bare client paging through the
 * same listing (bench/bare-listing.ts: fetch and JSON.parse of each page, nothing kept), and the
 * enforcer's own Glance client doing the same (bench/client-listing.ts: its streamed reader).
 *
 *   npm run bench:reconcile                                   # 3 rounds of 100k, 400k, 1M, medians
 *   npm run bench:reconcile -- --rounds 1 --sizes 100000,400000 --json
 *
 * Each round runs, for each size: bare, client, the first pass (empty ledger), bare, the
 * steady-state pass (the same ledger again): machine noise hits them alike. Peak RSS is the kernel's high-water mark
 * of the child (bench/peak-rss.ts); time is the child's wall time, start-up included. Both children
 * run under plain node from a bundle made at the start (esbuild, node_modules left external) of
 * bench/cli-from-source.ts (the bin's entry over src/: the tree as it is, not dist/) and of the
 * two baselines, so no TypeScript loader weighs on their figures. Keystone is a
 * stand-in in this process (the token, no unified limits), so the limits are the static
 * QUOTA_LIMITS: image_count_total=5, which no project exceeds (nothing is deleted).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import { keystoneStandIn } from '../test/support/keystone-standin.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    sizes: { type: 'string', default: '100000,400000,1000000' },
    json: { type: 'boolean', default: false },
  },
});
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds: expected a whole number of rounds such as 3, got '${values.rounds}'`);
const sizes = values.sizes.split(',').map(Number);
if (sizes.some((n) => !Number.isInteger(n) || n < 1))
  throw new Error(`--sizes: expected numbers of images separated by commas such as 100000,400000, got '${values.sizes}'`);

const MB = 1024 * 1024;
const CHILD_TIMEOUT_MS = 3_600_000;
const root = join(import.meta.dirname, '..');
const uptime = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

interface Run {
  ok: boolean;
  ms: number;
  peakRssBytes: number;
  /** The pass's own figure ("in X s"), without the process's start-up. */
  reconcileMs?: number;
  error?: string;
}

// The environment of every child: none of the caller's OpenStack or ledger settings leak in.
const ours = /^(OS_|GLANCE_|STORE_|QUOTA_|REDIS_|ENFORCEMENT_|EXEMPT_|LOG_LEVEL$)/;
const baseEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !ours.test(key)));

// Inside the tree, so that the bundle finds node_modules as src/ does (better-sqlite3 for one).
const bundles = join(root, 'node_modules', '.cache', 'bench-reconcile');
await build({
  entryPoints: { cli: 'bench/cli-from-source.ts', bare: 'bench/bare-listing.ts', client: 'bench/client-listing.ts', 'peak-rss': 'bench/peak-rss.ts' },
  absWorkingDir: root,
  outdir: bundles,
  outExtension: { '.js': '.mjs' },
  bundle: true,
  // The bin's dynamic imports (a command, a store adapter) stay chunks loaded when asked for, as
  // under dist/: bundled whole, the CLI would load every store's driver and the AWS SDK at start.
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  platform: 'node',
  format: 'esm',
  target: 'node22',
  packages: 'external',
  logLevel: 'warning',
});

const keystone = await keystoneStandIn();
const glance = spawn(process.execPath, ['--import', 'tsx', 'test/support/cloud-glance.ts'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
const glancePort = await new Promise<number>((resolve, reject) => {
  glance.once('exit', (code) => reject(new Error(`test/support/cloud-glance.ts exited (${code}) before listening`)));
  createInterface({ input: glance.stdout }).once('line', (line) => resolve((JSON.parse(line) as { port: number }).port));
});
const envOf = (n: number, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  ...baseEnv,
  ...keystone.env,
  OS_PROJECT_NAME: 'service',
  OS_PROJECT_DOMAIN_NAME: 'Default',
  GLANCE_URL: `http://127.0.0.1:${glancePort}/clouds/${n}`,
  QUOTA_LIMITS: 'image_count_total=5',
  LOG_LEVEL: 'warn',
  ...extra,
});

/**
 * One bundled child under bench/peak-rss.ts: its wall time, peak RSS and stdout. Its stderr is
 * drained as a log collector would drain it (the first pass logs a warning a project: tens of MB at 1M
 * images), keeping only what is not a JSON log line (the CLI's own messages) and the last lines.
 */
function child(bundle: 'cli' | 'bare' | 'client', args: string[], env: NodeJS.ProcessEnv): Promise<Run & { stdout: string }> {
  const rssFile = join(mkdtempSync(join(tmpdir(), 'gqe-rss-')), 'peak.json');
  const started = performance.now();
  const proc = spawn(process.execPath, ['--import', join(bundles, 'peak-rss.mjs'), join(bundles, `${bundle}.mjs`), ...args], {
    cwd: root,
    env: { ...env, PEAK_RSS_FILE: rssFile },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  proc.stdout.setEncoding('utf8').on('data', (text: string) => {
    stdout += text;
  });
  const said: string[] = [];
  let tail: string[] = [];
  createInterface({ input: proc.stderr }).on('line', (line) => {
    if (!line.startsWith('{') && said.length < 20) said.push(line);
    tail = [...tail.slice(-2), line.slice(0, 200)];
  });
  const timer = setTimeout(() => proc.kill('SIGKILL'), CHILD_TIMEOUT_MS);
  return new Promise((resolve) => {
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      const ms = performance.now() - started;
      let peakRssBytes = Number.NaN;
      try {
        peakRssBytes = (JSON.parse(readFileSync(rssFile, 'utf8')) as { peakRssBytes: number }).peakRssBytes;
      } catch {} // killed before its exit handler: the error below says why
      rmSync(join(rssFile, '..'), { recursive: true, force: true });
      const ok = code === 0;
      const error = `exit ${code ?? signal}: ${(said.length > 0 ? said : tail).join(' | ')}`.slice(0, 400);
      resolve({ ok, ms, peakRssBytes, stdout, ...(ok ? {} : { error }) });
    });
  });
}

async function listing(bundle: 'bare' | 'client', n: number): Promise<Run> {
  const run = await child(bundle, [], envOf(n));
  if (!run.ok) return run;
  const listed = (JSON.parse(run.stdout) as { listed: number }).listed;
  return listed === n ? run : { ...run, ok: false, error: `the ${bundle} listing gave ${listed} images of ${n}` };
}

async function pass(n: number, ledgerDir: string): Promise<Run> {
  const run = await child('cli', ['reconcile'], envOf(n, { STORE_URL: `sqlite://${join(ledgerDir, 'ledger.db')}` }));
  if (!run.ok) return run;
  // reconcile (enforce): 20000 projects, 100000 images listed, ledger corrected {...}, 0 failed, 0 over quota; ... in 8.9 s
  const said = /(\d+) images listed, .*, (\d+) failed, (\d+) over quota; .* in ([\d.]+) s/.exec(run.stdout);
  if (!said) return { ...run, ok: false, error: `reconcile printed no summary: ${run.stdout.slice(0, 200)}` };
  const [listed, failed, over] = [Number(said[1]), Number(said[2]), Number(said[3])];
  if (listed !== n || failed !== 0 || over !== 0)
    return { ...run, ok: false, error: `reconcile listed ${listed} of ${n} images, ${failed} projects failed, ${over} over quota` };
  return { ...run, reconcileMs: Number(said[4]) * 1000 };
}

const kinds = ['bare', 'client', 'first', 'steady'] as const;
type Kind = (typeof kinds)[number];
const runs = new Map<number, Record<Kind, Run[]>>(sizes.map((n) => [n, { bare: [], client: [], first: [], steady: [] }]));
const loadBefore = uptime();
const started = new Date();
try {
  for (let r = 0; r < rounds; r++) {
    for (const n of sizes) {
      const of = runs.get(n)!;
      const ledgerDir = mkdtempSync(join(tmpdir(), 'gqe-bench-reconcile-'));
      try {
        of.bare.push(await listing('bare', n));
        of.client.push(await listing('client', n));
        of.first.push(await pass(n, ledgerDir));
        of.bare.push(await listing('bare', n));
        of.steady.push(await pass(n, ledgerDir));
      } finally {
        rmSync(ledgerDir, { recursive: true, force: true });
      }
      if (!values.json) process.stderr.write(`round ${r + 1}/${rounds}, ${n} images done (load ${uptime()})\n`);
    }
  }
} finally {
  glance.kill();
  await keystone.close();
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
interface Figures {
  ms?: number;
  rssMB?: number;
  reconcileMs?: number;
  failed?: string;
}
const sum = (of: Run[]): Figures => {
  const failed = of.find((x) => !x.ok);
  if (failed) return { failed: failed.error ?? 'failed' };
  const reconcileMs = of.every((x) => x.reconcileMs !== undefined) ? { reconcileMs: median(of.map((x) => x.reconcileMs!)) } : {};
  return { ms: median(of.map((x) => x.ms)), rssMB: median(of.map((x) => x.peakRssBytes)) / MB, ...reconcileMs };
};
const rows = sizes.map((n) => {
  const of = runs.get(n)!;
  const [b, c, first, steady] = [sum(of.bare), sum(of.client), sum(of.first), sum(of.steady)];
  const ratio = (x: Figures, to: Figures) => (x.ms !== undefined && to.ms !== undefined ? x.ms / to.ms : undefined);
  const ratios = (x: Figures) => ({ timeVsBare: ratio(x, b), timeVsClient: ratio(x, c) });
  return { images: n, bare: b, client: { ...c, timeVsBare: ratio(c, b) }, first: { ...first, ...ratios(first) }, steady: { ...steady, ...ratios(steady) } };
});
const rssRatio = (kind: 'first' | 'steady', big: number, small: number) => {
  const [a, b] = [rows.find((x) => x.images === big)?.[kind].rssMB, rows.find((x) => x.images === small)?.[kind].rssMB];
  return a !== undefined && b !== undefined ? a / b : undefined;
};
const rssRatios = Object.fromEntries(
  sizes.filter((n) => n !== sizes[0]).map((n) => [`${n}/${sizes[0]}`, { first: rssRatio('first', n, sizes[0]!), steady: rssRatio('steady', n, sizes[0]!) }]),
);
const load = { before: loadBefore, after: uptime() };

if (values.json) {
  process.stdout.write(`${JSON.stringify({ date: started.toISOString(), node: process.version, rounds, load, rows, rssRatios }, null, 2)}\n`);
} else {
  const f = (x: number | undefined, d = 1) => (x === undefined ? '-' : x.toFixed(d));
  const cell = (x: Figures & { timeVsBare?: number | undefined; timeVsClient?: number | undefined }, ratios: ('timeVsBare' | 'timeVsClient')[]) =>
    x.failed ? `failed: ${x.failed}` : [f(x.ms! / 1000).padStart(7), f(x.rssMB, 0).padStart(6), ...ratios.map((r) => f(x[r], 2).padStart(6))].join(' ');
  console.log(`reconcile bench, ${rounds} round(s), medians, node ${process.version}, ${started.toISOString()}, load ${load.before} -> ${load.after}`);
  console.log(
    `${''.padStart(9)} ${'bare listing'.padEnd(14)} | ${"enforcer's client".padEnd(21)} | ${'first pass (empty ledger)'.padEnd(28)} | steady pass (same ledger)`,
  );
  // In the cells' own widths: seconds 7, MB and each ratio 6.
  const head = (...names: string[]) => names.map((name, n) => name.padStart(n === 0 ? 7 : 6)).join(' ');
  console.log(
    `${'images'.padStart(9)} ${head('s', 'MB')} | ${head('s', 'MB', 'x bare')} | ${head('s', 'MB', 'x bare', 'x clnt')} | ${head('s', 'MB', 'x bare', 'x clnt')}`,
  );
  for (const row of rows)
    console.log(
      `${String(row.images).padStart(9)} ${cell(row.bare, [])} | ${cell(row.client, ['timeVsBare'])} | ${cell(row.first, ['timeVsBare', 'timeVsClient'])} | ${cell(row.steady, ['timeVsBare', 'timeVsClient'])}`,
    );
  for (const [sizesRatio, r] of Object.entries(rssRatios))
    console.log(`peak RSS ${sizesRatio}: first pass ${f(r.first, 2)}x, steady pass ${f(r.steady, 2)}x (done when the 400000/100000 one is at most 1.2x)`);
  console.log('time: done when each pass is at most 1.5x the bare listing');
}
