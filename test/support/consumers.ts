/**
 * Consumer processes (test/support/consume-process.ts) as children of a test or benchmark, and
 * what they report: batches committed and acknowledged, results, logs, exit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MessageResult } from '../../src/pipeline/index.js';

const ROOT = join(import.meta.dirname, '..', '..');
const SCRIPT = join(import.meta.dirname, 'consume-process.ts');

export interface ConsumerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ConsumerProcess {
  readonly pid: number;
  /** Messages of the batches committed and acknowledged so far. */
  readonly committed: number;
  readonly results: Record<MessageResult, number>;
  /** performance.now() of the last committed batch. */
  readonly lastCommitAt: number;
  /** stderr, one parsed JSON log line each (pino). */
  readonly logs: Record<string, unknown>[];
  /** Set once the process has exited. */
  readonly exit: ConsumerExit | undefined;
  readonly exited: Promise<ConsumerExit>;
  /** With CONSUME_PROCESS_WAIT_FOR_GO=1: connect and start consuming now. */
  go(): void;
  /** Resolves when the process says it consumes. */
  connected(timeoutMs?: number): Promise<void>;
  /** SIGTERM (drain, then exit), and the exit. */
  stop(): Promise<ConsumerExit>;
  /** SIGKILL: no drain, whatever it holds unacknowledged goes back to the queue. */
  kill(): Promise<ConsumerExit>;
  /** The last log lines and stdout events, for an assertion message. */
  tail(): string;
}

/**
 * Starts one consumer process with `env` over this process's environment, and resolves once its
 * store is open (`ready`). It fails with the process's own last words when it exits first.
 */
export async function startConsumer(env: Record<string, string>, timeoutMs = 60_000): Promise<ConsumerProcess> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', SCRIPT], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'warn', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const events: Record<string, unknown>[] = [];
  const stderrText: string[] = [];
  const results: Record<MessageResult, number> = { applied: 0, duplicate: 0, ignored: 0, invalid: 0 };
  let committed = 0;
  let lastCommitAt = Number.NaN;
  let exit: ConsumerExit | undefined;
  let isConnected = false;
  const listeners = new Set<() => void>();
  const notify = () => {
    for (const l of listeners) l();
  };

  const lines = (stream: NodeJS.ReadableStream, onLine: (line: string) => void) => {
    let rest = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      rest += chunk;
      const parts = rest.split('\n');
      rest = parts.pop() ?? '';
      for (const p of parts) if (p.trim()) onLine(p);
    });
  };
  lines(child.stdout!, (line) => {
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line) as Record<string, unknown>;
    } catch {
      e = { event: 'stdout', line };
    }
    events.push(e);
    if (e.event === 'committed') {
      committed += Number(e.messages);
      for (const r of Object.keys(results) as MessageResult[]) results[r] += Number(e[r] ?? 0);
      lastCommitAt = performance.now();
    } else if (e.event === 'connected') {
      isConnected = true;
    }
    notify();
  });
  lines(child.stderr!, (line) => {
    try {
      logs.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      stderrText.push(line);
    }
  });
  const exited = new Promise<ConsumerExit>((resolve) =>
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      notify();
      resolve(exit);
    }),
  );

  const tail = () =>
    [
      `consumer ${child.pid}${exit ? ` exited (code ${exit.code}, signal ${exit.signal})` : ''}`,
      ...stderrText.slice(-15),
      ...logs.slice(-8).map((l) => JSON.stringify(l)),
      ...events.filter((e) => e.event !== 'committed').map((e) => JSON.stringify(e)),
    ].join('\n');

  const until = (what: string, done: () => boolean, ms: number) =>
    new Promise<void>((resolve, reject) => {
      if (done()) return resolve();
      const check = () => {
        if (done()) finish();
        else if (exit) finish(new Error(`consumer exited before it was ${what}:\n${tail()}`));
      };
      const timer = setTimeout(() => finish(new Error(`consumer not ${what} after ${ms} ms:\n${tail()}`)), ms);
      const finish = (err?: Error) => {
        clearTimeout(timer);
        listeners.delete(check);
        if (err) reject(err);
        else resolve();
      };
      listeners.add(check);
    });

  const signal = async (sig: NodeJS.Signals) => {
    if (!exit) child.kill(sig);
    return exited;
  };

  await until('ready', () => events.some((e) => e.event === 'ready'), timeoutMs).catch(async (err: unknown) => {
    child.kill('SIGKILL');
    await exited;
    throw err;
  });

  return {
    pid: child.pid!,
    get committed() {
      return committed;
    },
    results,
    get lastCommitAt() {
      return lastCommitAt;
    },
    logs,
    get exit() {
      return exit;
    },
    exited,
    go: () => void child.stdin!.write('go\n'),
    connected: (ms = timeoutMs) => until('connected', () => isConnected, ms),
    stop: () => signal('SIGTERM'),
    kill: () => signal('SIGKILL'),
    tail,
  };
}

/** Starts `n` consumers side by side and waits until every one consumes (or, with WAIT_FOR_GO, is ready). */
export async function startConsumers(n: number, env: Record<string, string>): Promise<ConsumerProcess[]> {
  const started = await Promise.allSettled(Array.from({ length: n }, () => startConsumer(env)));
  const consumers = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    await Promise.all(consumers.map((c) => c.kill()));
    throw failed.reason;
  }
  if (env.CONSUME_PROCESS_WAIT_FOR_GO !== '1') await Promise.all(consumers.map((c) => c.connected()));
  return consumers;
}

/** Polls `done` every 50 ms; rejects after `timeoutMs` with `what()` in the message. */
export async function waitUntil(done: () => boolean | Promise<boolean>, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await done())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what()}`);
    await sleep(50);
  }
}

/** Kills whatever is still running: for a `finally`, so no test leaves a consumer behind. */
export async function killAll(consumers: readonly ConsumerProcess[]): Promise<void> {
  await Promise.all(consumers.map((c) => (c.exit ? c.exited : c.kill())));
}
