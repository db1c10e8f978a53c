/**
 * What a create pays for the admission check (issue 21), against the real lab:
 *
 *   eval "$(bash test/e2e/lab.sh env)" && npm run build && npm run bench:admission
 *   npm run bench:admission -- --creates 100 --store sqlite
 *   npm run bench:admission -- --creates 100 --store redis://127.0.0.1:6379/0   # the gate over a shared store
 *
 * One fresh project (test/e2e/support/lab.ts TestProject) with image_count_total far above what
 * the run makes, one member token for every request (after the first, the endpoint's token cache
 * hits), `glance-quota-enforcer gate` as a real process over a SQLite (or --store) ledger, and
 * two nginx (Debian's nginx-light) from the shipped deploy/nginx config: one as shipped, one the
 * same with its auth_request lines removed. Each iteration times one POST /v2/images, one after
 * the other, on each of, in an order that rotates:
 *
 *   glance        Glance itself (:9292, use_keystone_limits=False)
 *   nginx         nginx without the check, in front of it
 *   nginx+gate    nginx with the check (the shipped config)
 *   unified       the lab's oracle glance-api (:9293, same database, use_keystone_limits=True):
 *                 Glance's own unified limits, the anchor
 *
 * plus the check alone, as nginx asks it (a GET with X-Original-Method/URI, the token, keep-alive),
 * and the same two nginx configs in front of a stub that answers 201 at once (`stub nginx`,
 * `stub nginx+gate`): a Glance create varies by tens of ms on a busy machine, which hides a
 * millisecond; against the stub the difference is the check's cost through nginx alone.
 * Every image is deleted after its round, outside the timing. The gate's cost is nginx+gate minus
 * nginx (medians and p99s of the same run); unified limits' is unified minus glance.
 */
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { enforcerEnv, lab, TestProject } from '../test/e2e/support/lab.js';
import { startGate } from '../test/e2e/support/gate.js';
import { startNginx, type RunningNginx } from '../test/e2e/support/nginx.js';

const { values: args } = parseArgs({ options: { creates: { type: 'string', default: '100' }, store: { type: 'string', default: 'sqlite' } } });
const N = Number(args.creates);
if (!(N >= 10 && N <= 1000)) throw new Error('bench:admission: --creates in [10, 1000]');
const l = lab();
for (const url of [l.authUrl, l.glanceUrl, l.oracleUrl]) {
  if (!/^https?:\/\/(127\.0\.0\.1|localhost|\[::1\])[:/]/.test(url)) throw new Error(`bench:admission runs against a lab on loopback only, not ${url}`);
}

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
  return { median: at(0.5), p99: at(0.99), n: s.length };
}
const f = (ms: number) => ms.toFixed(2).padStart(8);

/** The shipped config without its check: the same proxy, minus auth_request. */
async function plainNginx(admissionPort: number, glanceUrl = l.glanceUrl): Promise<RunningNginx> {
  const shipped = join(import.meta.dirname, '..', 'deploy', 'nginx', 'glance-api-admission.conf');
  const dir = mkdtempSync(join(tmpdir(), 'gqe-bench-conf-'));
  const plain = readFileSync(shipped, 'utf8')
    .split('\n')
    .filter((line) => !/^\s*(auth_request|error_page)\s/.test(line))
    .join('\n');
  writeFileSync(join(dir, 'glance-api-admission.conf'), plain);
  return startNginx({ glanceUrl, admissionPort, configFile: join(dir, 'glance-api-admission.conf') });
}

async function main(): Promise<void> {
  const p = await TestProject.create(l, 'bench-admission');
  const stops: (() => Promise<unknown>)[] = [() => p.remove()];
  try {
    await p.setLimit('image_count_total', 1_000_000);
    const storeDir = mkdtempSync(join(tmpdir(), 'gqe-bench-admission-'));
    const storeUrl = args.store === 'sqlite' ? `sqlite://${join(storeDir, 'ledger.db')}` : args.store;
    // A prefix of its own on a shared Redis: the bench's reservations expire there by themselves.
    const gate = await startGate(enforcerEnv(l, { STORE_URL: storeUrl, REDIS_KEY_PREFIX: `gqe-bench-${process.pid}:` }));
    stops.unshift(async () => gate.stop());
    const checked = await startNginx({ glanceUrl: l.glanceUrl, admissionPort: gate.port });
    stops.unshift(() => checked.stop());
    const plain = await plainNginx(gate.port);
    stops.unshift(() => plain.stop());

    // A Glance that answers every create at once: what is left is the proxy and the check.
    const stub = createServer((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(201, { 'content-type': 'application/json' }).end('{"id": "stub"}'));
    });
    await new Promise<void>((resolve) => stub.listen(0, '127.0.0.1', resolve));
    stops.unshift(
      () =>
        new Promise((resolve) => {
          stub.closeAllConnections();
          stub.close(resolve);
        }),
    );
    const stubUrl = `http://127.0.0.1:${(stub.address() as { port: number }).port}`;
    const stubChecked = await startNginx({ glanceUrl: stubUrl, admissionPort: gate.port });
    stops.unshift(() => stubChecked.stop());
    const stubPlain = await plainNginx(gate.port, stubUrl);
    stops.unshift(() => stubPlain.stop());

    const targets: Record<string, string> = {
      glance: l.glanceUrl,
      nginx: plain.url,
      'nginx+gate': checked.url,
      unified: l.oracleUrl,
      'stub nginx': stubPlain.url,
      'stub nginx+gate': stubChecked.url,
    };
    const names = Object.keys(targets);
    const times: Record<string, number[]> = Object.fromEntries([...names, 'check alone'].map((n) => [n, []]));
    const token = p.token;
    const checkUrl = `http://127.0.0.1:${gate.port}/admission/v1/image-create`;
    // Warm every path once (TCP pools, the gate's token cache and limits table, Keystone's caches).
    for (const name of names) await p.createAt(targets[name]!, 'bench-warm');
    const started = Date.now();
    for (let i = 0; i < N; i++) {
      const order = names.map((_, k) => names[(k + i) % names.length]!);
      for (const name of order) {
        const t0 = performance.now();
        const r = await p.createAt(targets[name]!, `bench-${i}`);
        times[name]!.push(performance.now() - t0);
        if (r.status !== 201) throw new Error(`${name}: create answered ${r.status}: ${r.text.slice(0, 200)}`);
      }
      const t0 = performance.now();
      const check = await fetch(checkUrl, { headers: { 'x-original-method': 'POST', 'x-original-uri': '/v2/images', 'x-auth-token': token } });
      await check.arrayBuffer();
      times['check alone']!.push(performance.now() - t0);
      if (i % 10 === 9 || i === N - 1) await p.removeImages();
    }
    const elapsed = (Date.now() - started) / 1000;
    const metrics = await (await fetch(`http://127.0.0.1:${gate.metricsPort}/metrics`)).text();
    const decisions = metrics.split('\n').filter((m) => m.startsWith('gqe_admission_decisions_total{'));

    const s = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, stats(v)]));
    console.log(`bench:admission, ${N} creates per path, one after the other, ${elapsed.toFixed(0)} s, store ${storeUrl.replace(/\/\/.*@/, '//***@')}`);
    console.log(`path              median ms   p99 ms`);
    for (const [k, v] of Object.entries(s)) console.log(`${k.padEnd(16)} ${f(v.median)} ${f(v.p99)}`);
    const gain = (a: string, b: string) => `median ${(s[a]!.median - s[b]!.median).toFixed(2)} ms, p99 ${(s[a]!.p99 - s[b]!.p99).toFixed(2)} ms`;
    console.log(`the check's cost (nginx+gate - nginx): ${gain('nginx+gate', 'nginx')}`);
    console.log(`the check's cost before a stub (stub nginx+gate - stub nginx): ${gain('stub nginx+gate', 'stub nginx')}`);
    console.log(`nginx's own cost (nginx - glance):     ${gain('nginx', 'glance')}`);
    console.log(`unified limits' cost (unified - glance): ${gain('unified', 'glance')}`);
    // The difference of two create times is within the noise of one create on a busy machine;
    // the check alone, timed the way nginx asks it, is its cost without that noise.
    const checkCost = s['stub nginx+gate']!.median - s['stub nginx']!.median;
    console.log(`unified limits' cost / the check's cost before the stub (medians): ${((s.unified!.median - s.glance!.median) / checkCost).toFixed(0)}x`);
    console.log(`gate decisions: ${decisions.join('; ')}`);
  } finally {
    for (const stop of stops) await stop().catch((err: Error) => console.error(`cleanup: ${err.message}`));
  }
}

await main();
