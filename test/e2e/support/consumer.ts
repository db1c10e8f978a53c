import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import amqp from 'amqplib';
import { labEnv } from './lab.js';

const BIN = join(import.meta.dirname, '..', '..', '..', 'bin', 'glance-quota-enforcer.js');

export interface RunningConsumer {
  queue: string;
  port: number;
  logs: Record<string, unknown>[];
  /** Resolves with the first log line whose msg matches. */
  waitFor(msg: RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
  metric(name: string, labels?: string): Promise<number>;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

/** `glance-quota-enforcer consume` as a real process, on a queue of its own. */
export async function startConsumer(env: NodeJS.ProcessEnv): Promise<RunningConsumer> {
  const queue = `gqe-e2e-${randomUUID().slice(0, 8)}`;
  const child: ChildProcess = spawn(process.execPath, [BIN, 'consume'], {
    env: { ...env, QUEUE_NAME: queue, METRICS_PORT: '0', TRANSPORT_URL: labEnv('LAB_TRANSPORT_URL'), LOG_LEVEL: 'info', PUBLISH_EXCHANGE: `${queue}-out` },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const waiters: { re: RegExp; resolve: (l: Record<string, unknown>) => void }[] = [];
  let rest = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    rest += chunk.toString('utf8');
    const lines = rest.split('\n');
    rest = lines.pop() ?? '';
    for (const line of lines) {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line);
      } catch {
        entry = { msg: line };
      }
      logs.push(entry);
      for (const w of waiters.splice(0)) String(entry.msg).match(w.re) ? w.resolve(entry) : waiters.push(w);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const waitFor = (re: RegExp, timeoutMs = 30_000) => {
    const seen = logs.find((l) => String(l.msg).match(re));
    if (seen) return Promise.resolve(seen);
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`consumer did not log ${re} within ${timeoutMs} ms; last lines: ${JSON.stringify(logs.slice(-5))}`)),
        timeoutMs,
      );
      waiters.push({
        re,
        resolve: (l) => {
          clearTimeout(t);
          resolve(l);
        },
      });
      void exited.then((code) => reject(new Error(`consumer exited with ${code} before logging ${re}: ${JSON.stringify(logs.slice(-5))}`)));
    });
  };
  const listening = await waitFor(/health and metrics listening/);
  await waitFor(/reconciled from Glance/);
  const port = Number(listening.port);
  return {
    queue,
    port,
    logs,
    waitFor,
    async metric(name, labels = '') {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
      return line ? Number(line.split(' ').pop()) : 0;
    },
    async stop() {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** The lab's broker, for publishing poison and looking at queues. */
export async function broker() {
  const connection = await amqp.connect(labEnv('LAB_AMQP_URL'));
  const channel = await connection.createConfirmChannel();
  return {
    channel,
    async count(queue: string): Promise<number> {
      return (await channel.checkQueue(queue)).messageCount;
    },
    async drop(queue: string): Promise<void> {
      await channel.deleteQueue(queue).catch(() => {});
      await channel.deleteQueue(`${queue}.dead`).catch(() => {});
    },
    async close() {
      await connection.close().catch(() => {});
    },
  };
}
