/**
 * What a Lambda cold start pays to import each function's handler: every packaged artifact
 * (`serverless package`, offline) unzipped as Lambda unzips it, its handler imported by a fresh
 * `node`, against a bare `node -e 0` in the same run.
 *
 *   npm run bench:cold                          # builds, packages, 21 rounds
 *   npm run bench:cold -- --rounds 41 --json
 *
 * Every round starts one bare node and one import of each handler, interleaved, so load from a
 * neighbour hits them all alike. Reported per handler, as medians: wall time from spawn to
 * exit, the child's own CPU time (user + system: less sensitive to a busy machine than the wall
 * clock), and both over the bare start. Targets (issue 11): <= 200 ms over bare, aim < 100 ms;
 * each artifact <= 3 MB zipped, aim < 1 MB.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildFunctions, FUNCTION_NAMES } from '../scripts/build-functions.js';
import { serverlessPackage, unzip } from '../scripts/package-functions.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '21' }, json: { type: 'boolean', default: false } } });
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds: expected a whole number of rounds such as 21, got '${values.rounds}'`);

// The child prints its own CPU time just before it exits.
const CPU = 'const u = process.cpuUsage(); process.stdout.write(String((u.user + u.system) / 1000));';

interface Sample {
  wallMs: number;
  cpuMs: number;
}

function start(args: string[], cwd: string): Sample {
  const t0 = process.hrtime.bigint();
  const child = spawnSync(process.execPath, args, { cwd, encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  if (child.status !== 0) throw new Error(`node ${args.join(' ')} failed in ${cwd}:\n${child.stderr}`);
  return { wallMs, cpuMs: Number(child.stdout) };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const work = mkdtempSync(join(tmpdir(), 'gqe-cold-'));
try {
  await buildFunctions();
  const artifacts = await serverlessPackage(join(work, 'package'));
  const unpacked: Record<string, string> = {};
  for (const name of FUNCTION_NAMES) {
    unpacked[name] = join(work, name);
    await unzip(artifacts[name]!, unpacked[name]);
  }

  const bare: Sample[] = [];
  const imports: Record<string, Sample[]> = Object.fromEntries(FUNCTION_NAMES.map((n) => [n, []]));
  // A first, unmeasured round: the files and node itself into the page cache.
  for (let round = -1; round < rounds; round++) {
    const b = start(['-e', CPU], work);
    const r = FUNCTION_NAMES.map(
      (name) => [name, start(['--input-type=module', '-e', `await import('./dist/lambda/${name}/index.mjs'); ${CPU}`], unpacked[name]!)] as const,
    );
    if (round < 0) continue;
    bare.push(b);
    for (const [name, s] of r) imports[name]!.push(s);
  }

  const bareWall = median(bare.map((s) => s.wallMs));
  const bareCpu = median(bare.map((s) => s.cpuMs));
  const results = FUNCTION_NAMES.map((name) => {
    const wall = median(imports[name]!.map((s) => s.wallMs));
    const cpu = median(imports[name]!.map((s) => s.cpuMs));
    return {
      function: name,
      zipBytes: statSync(artifacts[name]!).size,
      importWallMs: Math.round(wall),
      overBareWallMs: Math.round(wall - bareWall),
      wallRatio: Number((wall / bareWall).toFixed(2)),
      importCpuMs: Math.round(cpu),
      overBareCpuMs: Math.round(cpu - bareCpu),
    };
  });
  const report = { node: process.version, rounds, bare: { wallMs: Math.round(bareWall), cpuMs: Math.round(bareCpu) }, functions: results };

  if (values.json) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    console.log(`${process.version}, ${rounds} rounds, medians; bare \`node -e 0\`: ${report.bare.wallMs} ms wall, ${report.bare.cpuMs} ms CPU`);
    console.log('function   zip (KiB)  import wall  over bare  x bare  import CPU  over bare  target (200 ms over bare, 3 MB)');
    for (const r of results) {
      const ok = r.overBareWallMs <= 200 && r.zipBytes <= 3 * 1024 * 1024;
      console.log(
        `${r.function.padEnd(10)} ${String(Math.round(r.zipBytes / 1024)).padStart(9)} ${String(r.importWallMs).padStart(9)} ms ${String(r.overBareWallMs).padStart(6)} ms ${r.wallRatio.toFixed(2).padStart(7)} ${String(r.importCpuMs).padStart(8)} ms ${String(r.overBareCpuMs).padStart(6)} ms  ${ok ? 'met' : 'MISSED'}`,
      );
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
