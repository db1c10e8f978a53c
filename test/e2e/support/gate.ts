import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { freePort } from './nginx.js';

const BIN = join(import.meta.dirname, '..', '..', '..', 'bin', 'glance-quota-enforcer.js');

export interface RunningGate {
  port: number;
  metricsPort: number;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

/** `glance-quota-enforcer gate` as a real process (the built CLI) on a free port. */
export async function startGate(env: NodeJS.ProcessEnv): Promise<RunningGate> {
  const port = await freePort();
  const child = spawn(process.execPath, [BIN, 'gate'], {
    env: { ...env, ADMISSION_PORT: String(port), METRICS_PORT: '0', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const listening = new Promise<{ metricsPort: number }>((resolve, reject) => {
    child.stderr!.on('data', (c: Buffer) => {
      log += c.toString();
      const line = log.split('\n').find((l) => l.includes('admission endpoint listening'));
      if (line) resolve(JSON.parse(line));
    });
    void exited.then((code) => reject(new Error(`gate exited with ${code}: ${log.slice(-2000)}`)));
  });
  const timeout = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const { metricsPort } = await listening.finally(() => clearTimeout(timeout));
  return {
    port,
    metricsPort,
    async stop() {
      child.kill('SIGTERM');
      return exited;
    },
  };
}
