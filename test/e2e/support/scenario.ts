import { afterEach } from 'vitest';
import { broker, startConsumer, type RunningConsumer } from './consumer.js';
import { lab, TestProject } from './lab.js';

/*
 * What an end-to-end scenario is made of: projects of its own, a consumer on a queue of its own,
 * and everything removed after each test, whatever it left behind.
 */

const cleanup: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => {});
});

/** A Keystone project of the test's own, removed (images, limits and all) after the test. */
export async function project(label: string): Promise<TestProject> {
  const p = await TestProject.create(lab(), label);
  cleanup.push(() => p.remove());
  return p;
}

/** `consume` as a real process, stopped and its queues dropped after the test. */
export async function consumer(env: NodeJS.ProcessEnv): Promise<RunningConsumer> {
  const c = await startConsumer(env);
  cleanup.push(async () => {
    await c.stop();
    const b = await broker();
    await b.drop(c.queue);
    await b.close();
  });
  return c;
}

/** Runs `f` after the test, in reverse order of registration. */
export function afterTest(f: () => Promise<unknown>): void {
  cleanup.push(f);
}

/** Polls `probe` every 250 ms until `done`, or throws with the last value at the deadline. */
export async function until<T>(what: string, deadlineMs: number, probe: () => Promise<T>, done: (v: T) => boolean): Promise<T> {
  for (;;) {
    const v = await probe();
    if (done(v)) return v;
    if (Date.now() > deadlineMs) throw new Error(`${what}: still ${v instanceof Map ? `${v.size} images` : JSON.stringify(v)} at the deadline`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
