import { execFile, spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { broker } from './support/consumer.js';
import { enforcerEnv, lab, labEnv, TestProject } from './support/lab.js';

/*
 * The image `npm run image` builds, run the way Kolla runs its containers (host networking)
 * against the lab: it enforces, runs as non-root, and stops cleanly on `podman stop`.
 */

const IMAGE = process.env.GQE_IMAGE ?? 'localhost/glance-quota-enforcer:latest';
const ROOT = join(import.meta.dirname, '..', '..');
// As scripts/image.sh: podman's defaults need systemd, which these machines do not run.
const podmanEnv = {
  ...process.env,
  ...(!process.env.CONTAINERS_CONF && !existsSync('/run/systemd/system') ? { CONTAINERS_CONF: join(ROOT, 'deploy', 'podman', 'containers.conf') } : {}),
};
const run = promisify(execFile);
const podman = async (...args: string[]) => (await run('podman', args, { env: podmanEnv, timeout: 60_000 })).stdout.trim();

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

beforeAll(() => {
  const r = spawnSync('podman', ['image', 'exists', IMAGE], { env: podmanEnv });
  if (r.error || r.status !== 0) throw new Error(`no image ${IMAGE} (${r.error?.message ?? 'not built'}): run npm run image first`);
});

interface Container {
  name: string;
  logs: Record<string, unknown>[];
  waitFor(msg: RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** The attached `podman run`, which exits with the container's code. */
  exited: Promise<number | null>;
}

/** `consume` in the image, attached (its stderr is the enforcer's JSON log), on a queue of its own. */
async function startContainer(env: Record<string, string>): Promise<Container> {
  const name = `gqe-e2e-${randomUUID().slice(0, 8)}`;
  const flags = Object.entries(env).flatMap(([k, v]) => ['-e', `${k}=${v}`]);
  const child = spawn('podman', ['run', '--name', name, '--network=host', ...flags, IMAGE], { env: podmanEnv, stdio: ['ignore', 'ignore', 'pipe'] });
  const logs: Record<string, unknown>[] = [];
  let rest = '';
  child.stderr.on('data', (chunk: Buffer) => {
    rest += chunk.toString('utf8');
    const lines = rest.split('\n');
    rest = lines.pop() ?? '';
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line));
      } catch {
        logs.push({ msg: line });
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));
  cleanup.push(async () => {
    await podman('rm', '--force', '--volumes', name).catch(() => {});
  });
  const waitFor = async (re: RegExp, timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const seen = logs.find((l) => re.test(String(l.msg)));
      if (seen) return seen;
      if (gone || Date.now() > deadline)
        throw new Error(`container ${name} did not log ${re}${gone ? ' (it exited)' : ''}; last lines: ${JSON.stringify(logs.slice(-5))}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  return { name, logs, waitFor, exited };
}

describe(`the image ${IMAGE} against the lab`, () => {
  it('enforces a limit of 5 against a flood of 40, as a non-root PID 1 that podman stop ends with exit code 0', async () => {
    const l = lab();
    const p = await TestProject.create(l, 'container');
    cleanup.push(() => p.remove());
    await p.setLimit('image_count_total', 5);

    const queue = `gqe-e2e-${randomUUID().slice(0, 8)}`;
    cleanup.push(async () => {
      const b = await broker();
      await b.drop(queue);
      await b.close();
    });
    // The enforcer's lab identity, as an operator's env file holds it; STORE_URL is the image's
    // own default (its /data volume), the host's PATH and HOME mean nothing inside.
    const { PATH, HOME, STORE_URL, LOG_LEVEL, ...identity } = enforcerEnv(l);
    const c = await startContainer({
      ...(Object.fromEntries(Object.entries(identity).filter(([, v]) => v !== undefined)) as Record<string, string>),
      TRANSPORT_URL: labEnv('LAB_TRANSPORT_URL'),
      QUEUE_NAME: queue,
      PUBLISH_EXCHANGE: `${queue}-out`,
      METRICS_HOST: '127.0.0.1',
      METRICS_PORT: '0',
    });
    const listening = await c.waitFor(/health and metrics listening/);
    expect(listening.store).toMatch(/\/data\/glance-quota\.db/);
    await c.waitFor(/reconciled from Glance/);

    // PID 1 is node itself (no npm, no shell), running as the image's `node` user.
    const status = await podman('exec', c.name, 'cat', '/proc/1/status');
    expect(status).toMatch(/^Uid:\s+1000\s+1000\s+1000\s+1000$/m);
    expect(await podman('exec', c.name, 'cat', '/proc/1/comm')).toBe('node');
    const health = await fetch(`http://127.0.0.1:${Number(listening.port)}/readyz`);
    expect(`${health.status} ${await health.text()}`).toMatch(/^200 /);

    const created = await p.flood(40);
    const deadline = Date.now() + 20_000;
    let left = await p.images();
    while (left.size !== 5 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      left = await p.images();
    }
    const oldest = [...created]
      .sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id))
      .slice(0, 5)
      .map((i) => i.id)
      .sort();
    expect([...left.keys()].sort()).toEqual(oldest);

    await podman('stop', '--time', '20', c.name);
    expect(await c.exited).toBe(0);
    expect(await podman('inspect', '--format', '{{.State.ExitCode}}', c.name)).toBe('0');
    expect(c.logs.some((entry) => entry.msg === 'stopped')).toBe(true);
  }, 180_000);
});
