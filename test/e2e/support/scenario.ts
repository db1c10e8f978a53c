import { afterEach } from 'vitest';
import { broker, startConsumer, type RunningConsumer } from './consumer.js';
import { lab, TestProject } from './lab.js';

/**
 * What every end-to-end scenario sets up and tears down: projects of its own and consumers on
 * queues of their own, all removed after each test whatever happened, in reverse order.
 *
 * @example
 *   const { project, consumer } = scenario();
 *   it('...', async () => { const p = await project('flood'); const c = await consumer(enforcerEnv(lab())); });
 */
export function scenario() {
  const cleanup: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
  });
  /** Stopped (if still running) and its queues deleted after the test. */
  const removeAfter = (c: RunningConsumer): RunningConsumer => {
    cleanup.push(async () => {
      await c.stop();
      const b = await broker();
      await b.drop(c.queue);
      await b.close();
    });
    return c;
  };
  return {
    cleanup,
    removeAfter,
    async project(label: string): Promise<TestProject> {
      const p = await TestProject.create(lab(), label);
      cleanup.push(() => p.remove());
      return p;
    },
    async consumer(env: NodeJS.ProcessEnv): Promise<RunningConsumer> {
      return removeAfter(await startConsumer(env));
    },
  };
}

/** The `limit` oldest, by Glance's own order: created_at, then id. */
export function oldest(images: { id: string; created_at: string }[], limit: number): string[] {
  return [...images]
    .sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id))
    .slice(0, limit)
    .map((i) => i.id)
    .sort();
}

/** Polls `probe` until `done` says so, or fails saying what it still was at the deadline. */
export async function until<T>(what: string, deadlineMs: number, probe: () => Promise<T>, done: (v: T) => boolean): Promise<T> {
  for (;;) {
    const v = await probe();
    if (done(v)) return v;
    if (Date.now() > deadlineMs) throw new Error(`${what}: still ${v instanceof Map ? `${v.size} images` : JSON.stringify(v)} at the deadline`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
