/**
 * What listing a project costs: time and peak RSS growth of a child process that lists one
 * project's images through `GlanceClient` (streamed, keeping only GlanceImage's fields), against
 * the same child reading each page the old way (the whole body as one string, then JSON.parse,
 * 1000 a page), in the same run, from a local Glance stand-in (test/support/glance-standin.ts).
 *
 *   npm run bench:listing                       # 5 rounds, medians
 *   npm run bench:listing -- --rounds 9 --json
 *   npm run bench:listing -- --huge             # also 1000 x 0.6 MB (600 MB a page): the old way dies
 *
 * Every round runs each scenario both ways, interleaved, so load from a neighbour hits both alike.
 * RSS growth: the child's peak (sampled every 5 ms and at every page or image) over its RSS once
 * its modules are loaded and its token is in hand.
 */
import { execFile } from 'node:child_process';
import { parseArgs } from 'node:util';
import { glanceStandIn, type StandInImage } from '../test/support/glance-standin.js';

const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '5' }, json: { type: 'boolean', default: false }, huge: { type: 'boolean', default: false } },
});
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds: expected a whole number of rounds such as 5, got '${values.rounds}'`);

const MB = 1024 * 1024;
interface Scenario {
  name: string;
  owner: string;
  images: StandInImage[];
  rounds: number;
}
const many = (owner: string, count: number, fatBytes: number): StandInImage[] =>
  Array.from({ length: count }, (_, n) => ({ id: `${owner}-${String(n).padStart(6, '0')}`, owner, fatBytes, os_hidden: n % 50 === 49 }));
const scenarios: Scenario[] = [
  { name: '100 images, 1.2 MB of properties each', owner: 'p-fat', images: many('p-fat', 100, 1.2 * MB), rounds },
  { name: '20000 images, no extra properties', owner: 'p-many', images: many('p-many', 20_000, 0), rounds },
  ...(values.huge ? [{ name: '1000 images, 0.6 MB each (600 MB a page)', owner: 'p-huge', images: many('p-huge', 1000, 0.6 * MB), rounds: 1 }] : []),
];

interface Run {
  ok: boolean;
  listed?: number;
  ms?: number;
  growthBytes?: number;
  error?: string;
}

const standIn = await glanceStandIn(scenarios.flatMap((s) => s.images));

function run(owner: string, buffered: boolean): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'test/support/list-images-child.ts'],
      {
        env: { ...process.env, ...standIn.env, LIST_OWNER: owner, LIST_BUFFERED: buffered ? '1' : '0' },
        encoding: 'utf8',
        timeout: 300_000,
        maxBuffer: MB,
      },
      (error, stdout, stderr) => {
        if (error) {
          const line = stderr.split('\n').find((l) => /Error|error:/.test(l)) ?? error.message;
          resolve({ ok: false, error: line.trim().slice(0, 160) });
          return;
        }
        resolve({ ...(JSON.parse(stdout) as Run), ok: true });
      },
    );
  });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const rows: Record<string, unknown>[] = [];
for (const scenario of scenarios) {
  const streamed: Run[] = [];
  const buffered: Run[] = [];
  for (let r = 0; r < scenario.rounds; r++) {
    streamed.push(await run(scenario.owner, false));
    buffered.push(await run(scenario.owner, true));
  }
  const sum = (runs: Run[]) => {
    const ok = runs.filter((x) => x.ok);
    if (ok.length < runs.length) return { failed: runs.find((x) => !x.ok)!.error };
    return { listed: ok[0]!.listed!, ms: median(ok.map((x) => x.ms!)), rssGrowthMB: median(ok.map((x) => x.growthBytes!)) / MB };
  };
  const s = sum(streamed);
  const b = sum(buffered);
  rows.push({
    scenario: scenario.name,
    streamed: s,
    buffered: b,
    ...(s.ms !== undefined && b.ms !== undefined ? { timeRatio: s.ms / b.ms, rssRatio: s.rssGrowthMB! / b.rssGrowthMB! } : {}),
  });
}
await standIn.close();

if (values.json) {
  process.stdout.write(`${JSON.stringify({ rounds, node: process.version, rows }, null, 2)}\n`);
} else {
  const f = (x: unknown, d = 0) => (typeof x === 'number' ? x.toFixed(d) : '-');
  console.log(`listing bench, ${rounds} rounds (medians), node ${process.version}`);
  console.log('scenario                                      listed  streamed ms  RSS+ MB | buffered ms  RSS+ MB | time ratio  RSS ratio');
  for (const row of rows) {
    const s = row.streamed as { listed?: number; ms?: number; rssGrowthMB?: number; failed?: string };
    const b = row.buffered as typeof s;
    console.log(
      `${String(row.scenario).padEnd(44)} ${f(s.listed ?? b.listed).padStart(7)} ${f(s.ms).padStart(12)} ${f(s.rssGrowthMB, 1).padStart(8)} | ${b.failed ? `failed: ${b.failed}` : `${f(b.ms).padStart(11)} ${f(b.rssGrowthMB, 1).padStart(8)}`} | ${f(row.timeRatio, 2).padStart(10)} ${f(row.rssRatio, 3).padStart(10)}`,
    );
    if (s.failed) console.log(`  streamed failed: ${s.failed}`);
  }
}
