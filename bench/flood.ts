/**
 * Flood convergence against the real lab (issue 14, point 5): the enforcer's deletes per second
 * during a flood against a bare parallel-DELETE client, on the same Glance in the same run.
 *
 *   eval "$(bash test/e2e/lab.sh env)" && npm run build && npm run bench:flood
 *   npm run bench:flood -- --images 200 --concurrency 8,16 --rounds 2
 *
 * Every round (the order of the rows alternates between rounds):
 * 1. bare, C concurrent DELETEs: a fresh project (test/e2e/support/lab.ts TestProject, limit far
 *    above N), N queued images created at once, then deleted by C concurrent DELETEs with the
 *    enforcer's own token (its project scope, as `consume` gets it) and nothing else.
 * 2. bare during the flood (the ideal enforcer): a fresh project flooded with N creates by the
 *    bench itself, which keeps the first LIMIT images to return and DELETEs every later one the
 *    moment its create returns, with the first --concurrency DELETEs in flight, while the flood
 *    is still arriving. What no enforcer can beat on this Glance: its convergence is the floor.
 * 3. enforcer: `glance-quota-enforcer consume` as a real process (test/e2e/support/consumer.ts,
 *    built dist/, a queue of its own, SQLite ledger), a fresh project with image_count_total=5,
 *    a flood of N creates. Its deletions are timed from its own logs (`image deleted`, `atMs`:
 *    when Glance answered the DELETE), its passes from `ledger says over quota; asking Glance`
 *    (before the listing) and `Glance confirms` (after it).
 *
 * Every row also reads Glance's side from glance-api's request log (the lab's LAB_DIR): each
 * DELETE's time in Glance and the mean number of DELETEs Glance had in hand (Little's law: rate =
 * in flight / time in Glance), and the enforcer's listing GETs.
 *
 * Rates are deletions per second between the first and the last completed DELETE (completion to
 * completion: (n - 1) / span), the same definition for both clients. Convergence is the last
 * deletion's time after the flood's last create returned. Medians over the rounds.
 *
 * Loopback only; bounded: every wait has a deadline, every project and queue is removed at the end.
 */
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { broker, startConsumer, type RunningConsumer } from '../test/e2e/support/consumer.js';
import { enforcerEnv, lab, labEnv, TestProject, token, type Lab } from '../test/e2e/support/lab.js';

const { values: args } = parseArgs({
  options: {
    images: { type: 'string', default: '200' },
    concurrency: { type: 'string', default: '8,16' },
    rounds: { type: 'string', default: '2' },
    limit: { type: 'string', default: '5' },
    /** Seconds to wait for the enforcer to bring a project to its limit after the last create. */
    deadline: { type: 'string', default: '90' },
  },
});
const N = Number(args.images);
const CONCURRENCY = args.concurrency.split(',').map(Number);
const ROUNDS = Number(args.rounds);
const LIMIT = Number(args.limit);
const DEADLINE_MS = Number(args.deadline) * 1000;
if (!(N > LIMIT && N <= 1000) || CONCURRENCY.some((c) => !(c >= 1 && c <= 64)) || !(ROUNDS >= 1 && ROUNDS <= 10)) {
  throw new Error('bench:flood: --images in (limit, 1000], --concurrency each in [1, 64], --rounds in [1, 10]');
}

const l: Lab = lab();
for (const url of [l.authUrl, l.glanceUrl]) {
  if (!/^https?:\/\/(127\.0\.0\.1|localhost|\[::1\])[:/]/.test(url)) throw new Error(`bench:flood runs against a lab on loopback only, not ${url}`);
}
if (!existsSync(join(import.meta.dirname, '..', 'dist'))) throw new Error('bench:flood runs the built CLI: npm run build first');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
/** Deletions per second, completion to completion. */
const rateOf = (doneMs: number[]) => {
  const s = [...doneMs].sort((a, b) => a - b);
  return s.length < 2 ? 0 : ((s.length - 1) * 1000) / (s[s.length - 1]! - s[0]!);
};

interface BareResult {
  rate: number;
  wallRate: number;
  latencyP50: number;
  createRate: number;
  glance?: GlanceSide;
}
interface EnforcerResult {
  deleted: number;
  rate: number;
  /** The rate of the deletions after the last create returned (Glance no longer busy with creates). */
  tailRate: number;
  tailDeleted: number;
  convergedS: number;
  createRate: number;
  passes: number;
  listingMs: number;
  /** Time in the deletion window with no pass under way (between a pass's last DELETE and the next ask). */
  gapMs: number;
  windowMs: number;
  /** Last create returned -> the first `asking Glance` (the notifications' way through the broker and the ledger). */
  askAfterLastCreateMs: number;
  /** First `asking Glance` -> first deletion (the first listing, the limits read, the first DELETE). */
  askToFirstDeleteMs: number;
  /** The consume process's CPU (gqe_process_cpu_seconds_total) from the flood's start to the last deletion, in cores. */
  consumerCores: number;
  glance?: GlanceSide;
}

const cleanup: (() => Promise<unknown>)[] = [];

/**
 * Glance's side of the DELETEs, from glance-api's own request log (the lab's, when readable):
 * each line ends with the request's time in Glance, and is stamped when it finished. `inFlight` is
 * the mean number of DELETEs Glance had in hand over the span of the phase's DELETEs.
 */
interface GlanceSide {
  deletes: number;
  p50Ms: number;
  inFlight: number;
  gets: number;
  getMs: number;
}
const GLANCE_LOG = process.env.LAB_DIR ? join(process.env.LAB_DIR, 'log', 'glance-api.log') : undefined;
const logOffset = (): number => (GLANCE_LOG && existsSync(GLANCE_LOG) ? statSync(GLANCE_LOG).size : -1);
function glanceSide(from: number, ids: ReadonlySet<string>, projectId: string): GlanceSide | undefined {
  if (!GLANCE_LOG || from < 0) return undefined;
  const size = statSync(GLANCE_LOG).size;
  const buf = Buffer.alloc(size - from);
  const fd = openSync(GLANCE_LOG, 'r');
  try {
    readSync(fd, buf, 0, buf.length, from);
  } finally {
    closeSync(fd);
  }
  const spans: [number, number][] = [];
  let gets = 0;
  let getMs = 0;
  for (const line of buf.toString('utf8').split('\n')) {
    const m = /^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) .*"(DELETE|GET) \/v2\/images([^ "]*) HTTP\/1\.1" (\d+) \d+ ([\d.]+)$/.exec(line);
    if (!m) continue;
    const end = Date.parse(`${m[1]!.replace(' ', 'T')}Z`);
    const seconds = Number(m[5]);
    if (m[2] === 'DELETE' && ids.has(m[3]!.slice(1))) spans.push([end - seconds * 1000, end]);
    if (m[2] === 'GET' && m[3]!.includes(`owner=${projectId}`)) [gets, getMs] = [gets + 1, getMs + seconds * 1000];
  }
  if (spans.length === 0) return undefined;
  const lo = Math.min(...spans.map((s) => s[0]));
  const hi = Math.max(...spans.map((s) => s[1]));
  const busy = spans.reduce((t, s) => t + s[1] - s[0], 0);
  return { deletes: spans.length, p50Ms: median(spans.map((s) => s[1] - s[0])), inFlight: busy / (hi - lo), gets, getMs };
}
const side = (g: GlanceSide | undefined) =>
  g
    ? `; in Glance: ${g.deletes} DELETEs, p50 ${f(g.p50Ms, 0)} ms, ${f(g.inFlight, 2)} in flight on average${g.gets ? `, ${g.gets} listing GETs (${f(g.getMs, 0)} ms)` : ''}`
    : '';

async function project(label: string): Promise<TestProject> {
  const p = await TestProject.create(l, label);
  cleanup.push(() => p.remove());
  return p;
}

/** The enforcer's identity, scoped to its project as `consume`'s Glance client is. */
async function enforcerToken(): Promise<string> {
  return token(l, labEnv('LAB_ENFORCER_USERNAME'), l.passwords.enforcer, { projectId: labEnv('LAB_SERVICE_PROJECT_ID') });
}

async function floodTimed(p: TestProject): Promise<{ created: { id: string }[]; startMs: number; lastMs: number }> {
  const startMs = Date.now();
  const created = await p.flood(N, 'bench');
  return { created, startMs, lastMs: Date.now() };
}

async function bare(concurrency: number): Promise<BareResult> {
  const p = await project(`bench-bare${concurrency}`);
  await p.setLimit('image_count_total', 100_000); // no enforcer anywhere may touch it
  const { created, startMs, lastMs } = await floodTimed(p);
  const auth = await enforcerToken();
  const from = logOffset();
  const ids = created.map((i) => i.id);
  const done: number[] = [];
  const latencies: number[] = [];
  let next = 0;
  const t0 = Date.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < ids.length) {
        const id = ids[next++]!;
        const sent = Date.now();
        const r = await fetch(`${l.glanceUrl}/v2/images/${id}`, { method: 'DELETE', headers: { 'x-auth-token': auth }, signal: AbortSignal.timeout(30_000) });
        await r.arrayBuffer();
        if (r.status !== 204) throw new Error(`bare DELETE ${id}: HTTP ${r.status}`);
        done.push(Date.now());
        latencies.push(Date.now() - sent);
      }
    }),
  );
  const t1 = Date.now();
  const left = (await p.images()).size;
  if (left !== 0) throw new Error(`bare: ${left} images left after deleting all`);
  const glance = glanceSide(from, new Set(ids), p.id);
  return {
    rate: rateOf(done),
    wallRate: (ids.length * 1000) / (t1 - t0),
    latencyP50: median(latencies),
    createRate: (N * 1000) / (lastMs - startMs),
    ...(glance ? { glance } : {}),
  };
}

/**
 * The ideal enforcer, as a bare client: it floods the project itself, so it knows each image the
 * moment its create returns, keeps the first LIMIT to return and DELETEs every later one at once,
 * with `concurrency` DELETEs in flight, while the rest of the flood is still arriving. No listing,
 * no ledger: the most a client can get out of this Glance during a flood.
 */
async function bareDuringFlood(concurrency: number): Promise<{ rate: number; convergedS: number; createRate: number; glance?: GlanceSide }> {
  const p = await project(`bench-oracle${concurrency}`);
  await p.setLimit('image_count_total', 100_000);
  const auth = await enforcerToken();
  const from = logOffset();
  const queue: string[] = [];
  const all: string[] = [];
  let kept = 0;
  let creating = true;
  let wake: () => void = () => {};
  const startMs = Date.now();
  const creates = Promise.all(
    Array.from({ length: N }, (_, i) =>
      p.createImage(`bench-${i}`).then((id) => {
        all.push(id);
        if (kept < LIMIT) kept++;
        else queue.push(id);
        wake();
      }),
    ),
  ).then(() => {
    creating = false;
    wake();
    return Date.now();
  });
  const done: number[] = [];
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (;;) {
        const id = queue.shift();
        if (id === undefined) {
          if (!creating) return;
          await new Promise<void>((r) => {
            const prev = wake;
            wake = () => {
              prev();
              r();
            };
          });
          continue;
        }
        const r = await fetch(`${l.glanceUrl}/v2/images/${id}`, { method: 'DELETE', headers: { 'x-auth-token': auth }, signal: AbortSignal.timeout(30_000) });
        await r.arrayBuffer();
        if (r.status !== 204) throw new Error(`oracle DELETE ${id}: HTTP ${r.status}`);
        done.push(Date.now());
      }
    }),
  );
  const lastMs = await creates;
  const left = (await p.images()).size;
  if (left !== LIMIT) throw new Error(`oracle: ${left} images left, expected ${LIMIT}`);
  const glance = glanceSide(from, new Set(all), p.id);
  return { rate: rateOf(done), convergedS: (Math.max(...done) - lastMs) / 1000, createRate: (N * 1000) / (lastMs - startMs), ...(glance ? { glance } : {}) };
}

async function enforcer(): Promise<EnforcerResult> {
  const p = await project('bench-enforcer');
  await p.setLimit('image_count_total', LIMIT);
  const c: RunningConsumer = await startConsumer(enforcerEnv(l));
  cleanup.push(async () => {
    await c.stop();
    const b = await broker();
    await b.drop(c.queue);
    await b.close();
  });
  const from = logOffset();
  const cpu0 = await c.metric('gqe_process_cpu_seconds_total');
  const { created, startMs, lastMs } = await floodTimed(p);
  const want = N - LIMIT;
  const deadline = lastMs + DEADLINE_MS;
  const mine = (msg: string) => c.logs.filter((e) => e.msg === msg && e.projectId === p.id);
  while (mine('image deleted').length < want) {
    if (Date.now() > deadline) throw new Error(`enforcer: ${mine('image deleted').length} of ${want} deletions ${DEADLINE_MS / 1000} s after the last create`);
    await sleep(50);
  }
  const cpu1 = await c.metric('gqe_process_cpu_seconds_total');
  const cpuWallMs = Date.now() - startMs;
  const left = (await p.images()).size;
  if (left !== LIMIT) throw new Error(`enforcer: ${left} images left, expected ${LIMIT}`);
  const metric = await c.metric('gqe_actions_total', 'action="deleted"');
  if (metric !== want) throw new Error(`enforcer: gqe_actions_total{action="deleted"} is ${metric}, expected ${want}`);
  await c.stop();

  const deletions = mine('image deleted')
    .map((e) => Number(e.atMs))
    .sort((a, b) => a - b);
  const asks = mine('ledger says over quota; asking Glance').map((e) => Number(e.time));
  const confirms = mine('Glance confirms: project over quota').map((e) => Number(e.time));
  const first = deletions[0]!;
  const last = deletions[deletions.length - 1]!;
  // Passes: each ask is followed by its listing (ask -> confirm, or ask -> nothing over).
  let listingMs = 0;
  for (const a of asks) {
    const cf = confirms.find((t) => t >= a);
    if (cf !== undefined && a < last) listingMs += Math.max(0, cf - Math.max(a, first));
  }
  // Idle gaps: between the last deletion before an ask and that ask, within the window.
  let gapMs = 0;
  for (const a of asks.filter((t) => t > first && t < last)) {
    const before = deletions.filter((d) => d <= a).pop();
    if (before !== undefined) gapMs += a - before;
  }
  const tail = deletions.filter((d) => d > lastMs);
  const glance = glanceSide(from, new Set(created.map((i) => i.id)), p.id);
  return {
    askAfterLastCreateMs: asks[0]! - lastMs,
    askToFirstDeleteMs: first - asks[0]!,
    consumerCores: ((cpu1 - cpu0) * 1000) / cpuWallMs,
    ...(glance ? { glance } : {}),
    deleted: deletions.length,
    rate: rateOf(deletions),
    tailRate: tail.length >= 2 ? rateOf(tail) : 0,
    tailDeleted: tail.length,
    convergedS: (last - lastMs) / 1000,
    createRate: (N * 1000) / (lastMs - startMs),
    passes: asks.filter((a) => a <= last).length,
    listingMs,
    gapMs,
    windowMs: last - first,
  };
}

const bares = new Map<number, BareResult[]>(CONCURRENCY.map((c) => [c, []]));
const enforcers: EnforcerResult[] = [];
const oracles: Awaited<ReturnType<typeof bareDuringFlood>>[] = [];
const f = (x: number, d = 1) => x.toFixed(d);

async function main(): Promise<void> {
  console.log(
    `bench:flood: ${N} queued images per flood, limit image_count_total=${LIMIT}, bare DELETE concurrency ${CONCURRENCY.join(', ')}, ${ROUNDS} rounds, Glance ${l.glanceUrl}`,
  );
  for (let round = 1; round <= ROUNDS; round++) {
    const steps: (() => Promise<void>)[] = [
      ...CONCURRENCY.map((c) => async () => {
        const r = await bare(c);
        bares.get(c)!.push(r);
        console.log(
          `  round ${round}: bare x${c}: ${f(r.rate)} del/s (wall ${f(r.wallRate)}), DELETE p50 ${r.latencyP50} ms; flood ${f(r.createRate)} creates/s${side(r.glance)}`,
        );
      }),
      async () => {
        const r = await bareDuringFlood(CONCURRENCY[0]!);
        oracles.push(r);
        console.log(
          `  round ${round}: bare during the flood x${CONCURRENCY[0]}: ${f(r.rate)} del/s, converged ${f(r.convergedS, 2)} s after the last create; flood ${f(r.createRate)} creates/s${side(r.glance)}`,
        );
      },
      async () => {
        const r = await enforcer();
        enforcers.push(r);
        console.log(
          `  round ${round}: enforcer: ${r.deleted} deletions, ${f(r.rate)} del/s over ${f(r.windowMs / 1000, 2)} s; after the last create ${r.tailDeleted} at ${f(r.tailRate)} del/s; ` +
            `converged ${f(r.convergedS, 2)} s after the last create; flood ${f(r.createRate)} creates/s; ${r.passes} passes, listing ${f(r.listingMs / 1000, 2)} s, between passes ${f(r.gapMs / 1000, 2)} s; ` +
            `first ask ${f(r.askAfterLastCreateMs / 1000, 2)} s after the last create, first deletion ${f(r.askToFirstDeleteMs / 1000, 2)} s after it; consume used ${f(r.consumerCores, 2)} cores${side(r.glance)}`,
        );
      },
    ];
    if (round % 2 === 0) steps.reverse();
    for (const s of steps) await s();
    // Each round's projects are removed before the next: a growing Glance would slow later rounds.
    for (const g of cleanup.splice(0).reverse()) await g().catch((err: unknown) => console.error(`cleanup: ${(err as Error).message}`));
  }

  const rows: [string, number[], string][] = [];
  for (const [c, rs] of bares) rows.push([`bare, ${c} concurrent DELETEs`, rs.map((r) => r.rate), '']);
  rows.push([`bare during the flood, x${CONCURRENCY[0]}`, oracles.map((r) => r.rate), '']);
  rows.push(['enforcer (consume), whole flood', enforcers.map((r) => r.rate), '']);
  rows.push(['enforcer, after the last create', enforcers.map((r) => r.tailRate), '']);
  console.log(`\n${'row'.padEnd(34)}${'del/s'.padStart(8)}  rounds (del/s)`);
  for (const [name, xs] of rows) console.log(`${name.padEnd(34)}${f(median(xs)).padStart(8)}  ${xs.map((x) => f(x)).join(' ')}`);
  const bestBare = Math.max(...[...bares.values()].map((rs) => median(rs.map((r) => r.rate))));
  const sameC = bares.get(8) ? median(bares.get(8)!.map((r) => r.rate)) : undefined;
  const e = median(enforcers.map((r) => r.rate));
  console.log(
    `ratio enforcer / best bare: ${f(e / bestBare, 2)} (aim >= 0.9)` +
      (sameC ? `; enforcer / bare x8: ${f(e / sameC, 2)}` : '') +
      `; after the last create / best bare: ${f(median(enforcers.map((r) => r.tailRate)) / bestBare, 2)}`,
  );
  // Paired within each round (the same minute of the same machine): drift between rounds cancels out.
  const paired = enforcers.map((r, i) => r.rate / Math.max(...[...bares.values()].map((rs) => rs[i]!.rate)));
  console.log(`per round, enforcer / best bare of that round: median ${f(median(paired), 2)} (rounds ${paired.map((x) => f(x, 2)).join(' ')})`);
  const pairedTail = enforcers.map((r, i) => r.tailRate / Math.max(...[...bares.values()].map((rs) => rs[i]!.rate)));
  console.log(
    `per round, enforcer after the last create / best bare of that round: median ${f(median(pairedTail), 2)} (rounds ${pairedTail.map((x) => f(x, 2)).join(' ')})`,
  );
  const pairedFlood = enforcers.map((r, i) => r.rate / oracles[i]!.rate);
  console.log(`per round, enforcer / bare during the flood: median ${f(median(pairedFlood), 2)} (rounds ${pairedFlood.map((x) => f(x, 2)).join(' ')})`);
  console.log(
    `convergence after the last create: enforcer median ${f(median(enforcers.map((r) => r.convergedS)), 2)} s (rounds ${enforcers.map((r) => f(r.convergedS, 2)).join(' ')}); ` +
      `bare during the flood median ${f(median(oracles.map((r) => r.convergedS)), 2)} s (rounds ${oracles.map((r) => f(r.convergedS, 2)).join(' ')})`,
  );
  console.log(
    `enforcer passes (list, then delete): median ${median(enforcers.map((r) => r.passes))}; of its deletion window, listing ${f(median(enforcers.map((r) => (100 * r.listingMs) / r.windowMs)), 0)}%, ` +
      `between passes ${f(median(enforcers.map((r) => (100 * r.gapMs) / r.windowMs)), 0)}%; first ask ${f(median(enforcers.map((r) => r.askAfterLastCreateMs)) / 1000, 2)} s after the last create, ` +
      `first deletion ${f(median(enforcers.map((r) => r.askToFirstDeleteMs)) / 1000, 2)} s after the first ask; consume used ${f(median(enforcers.map((r) => r.consumerCores)), 2)} cores (flood start to last deletion)`,
  );
  const inGlance = (name: string, gs: (GlanceSide | undefined)[]) => {
    const g = gs.filter((x): x is GlanceSide => x !== undefined);
    if (g.length)
      console.log(
        `in Glance, ${name}: DELETE p50 ${f(median(g.map((x) => x.p50Ms)), 0)} ms, ${f(median(g.map((x) => x.inFlight)), 2)} DELETEs in flight on average`,
      );
  };
  for (const [c, rs] of bares)
    inGlance(
      `bare x${c}`,
      rs.map((r) => r.glance),
    );
  inGlance(
    'bare during the flood',
    oracles.map((r) => r.glance),
  );
  inGlance(
    'enforcer',
    enforcers.map((r) => r.glance),
  );
}

try {
  await main();
} finally {
  for (const g of cleanup.splice(0).reverse()) await g().catch((err: unknown) => console.error(`cleanup: ${(err as Error).message}`));
}
