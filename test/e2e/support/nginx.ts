import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SHIPPED = join(import.meta.dirname, '..', '..', '..', 'deploy', 'nginx', 'glance-api-admission.conf');

/** A port nothing listens on right now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface RunningNginx {
  url: string;
  errorLog(): string;
  stop(): Promise<void>;
}

/**
 * The shipped deploy/nginx config, as an operator adapts it (its three ADAPT lines: the listen
 * address, Glance, the admission endpoint), run by Debian's nginx-light in a directory of its own.
 * nginx must be installed (test/e2e/lab.sh installs nginx-light); a missing one fails the test.
 */
export async function startNginx(o: { glanceUrl: string; admissionPort: number; configFile?: string }): Promise<RunningNginx> {
  const dir = mkdtempSync(join(tmpdir(), 'gqe-nginx-'));
  // nginx's workers run as www-data: its temp paths must be theirs to write.
  chmodSync(dir, 0o777);
  const port = await freePort();
  const glance = new URL(o.glanceUrl).host;
  const conf = readFileSync(o.configFile ?? SHIPPED, 'utf8')
    .replace(/server 127\.0\.0\.1:9292;/, `server ${glance};`)
    .replace(/server 127\.0\.0\.1:10921;/, `server 127.0.0.1:${o.admissionPort};`)
    .replace(/listen 127\.0\.0\.1:9294;/, `listen 127.0.0.1:${port};`);
  if (!conf.includes(`:${port};`) || !conf.includes(`:${o.admissionPort};`))
    throw new Error(`${o.configFile ?? SHIPPED}: its ADAPT lines changed; update test/e2e/support/nginx.ts`);
  writeFileSync(join(dir, 'glance.conf'), conf);
  writeFileSync(
    join(dir, 'nginx.conf'),
    `daemon off;\npid ${dir}/nginx.pid;\nerror_log ${dir}/error.log warn;\nevents { worker_connections 1024; }\n` +
      `http {\n  access_log off;\n  client_body_temp_path ${dir}/body;\n  proxy_temp_path ${dir}/proxy;\n  include ${dir}/glance.conf;\n}\n`,
  );
  const child: ChildProcess = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', `${dir}/`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const spawnError = new Promise<never>((_, reject) =>
    child.on('error', (err) => reject(new Error(`nginx: ${err.message}; install it with: bash test/e2e/lab.sh install (nginx-light)`))),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await Promise.race([
      fetch(`${url}/`, { signal: AbortSignal.timeout(1_000) }).then(
        () => true,
        () => false,
      ),
      spawnError,
    ]);
    if (up) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      const log = join(dir, 'error.log');
      throw new Error(`nginx did not start: ${stderr}${existsSync(log) ? readFileSync(log, 'utf8') : ''}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    errorLog: () => readFileSync(join(dir, 'error.log'), 'utf8'),
    async stop() {
      child.kill('SIGQUIT');
      await exited;
    },
  };
}
