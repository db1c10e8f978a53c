import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { killAll, startConsumer, waitUntil, type ConsumerProcess } from '../support/consumers.js';
import { generateHistory, withDuplicates } from '../support/generate.js';
import { compareLedgers, decider, replayInMemory } from '../support/ledger-oracle.js';
import { freshLedger, freshQueue, holdService, requireServices, withServiceStopped, type TestLedger, type TestQueue } from '../support/services.js';

/**
 * The ledger's database goes away for 10 s (a failover, a restart for a minor upgrade) while
 * Glance keeps notifying. The consumer must not acknowledge anything it could not commit, must
 * not exit (a crash loop would only add reconnect storms), and must catch up once the store is back.
 *
 * PostgreSQL keeps its data, so "nothing lost" is checked in full: the ledger equals a replay of
 * every body. This machine's Redis keeps nothing on disk (`--save "" --appendonly no`), so a
 * Redis restart loses the ledger itself: that loss is expected, and for Redis the test checks only
 * that nothing is acked while it is down, that the process stays up, and that it resumes and drains.
 */

const MESSAGES = 12_000;
const PER_SECOND = 800;
const OUTAGE_MS = 10_000;
/** A batch whose commit reached the server just before it stopped may still be acked this long after. */
const GRACE_MS = 250;
const LIMITS = 'image_count_total=20,image_size_total=51200';

describe.each(['postgres', 'redis'] as const)('%s stopped for 10 s under one consume process', (kind) => {
  it(kind === 'postgres'
    ? 'acks nothing while PostgreSQL is down, stays up, and loses nothing after it is back'
    : 'acks nothing while Redis is down, stays up, and resumes after it is back (Redis itself loses its data)', async () => {
    await requireServices(kind, 'rabbitmq');
    const release = await holdService(kind);
    let ledger: TestLedger | undefined;
    let queue: TestQueue | undefined;
    let consumer: ConsumerProcess | undefined;
    let publishing: Promise<void> | undefined;
    const stopPublishing = new AbortController();
    try {
      ledger = await freshLedger(kind);
      queue = await freshQueue('it-outage');
      const bodies = withDuplicates(generateHistory({ seed: 9_042, projects: 100, messages: Math.round(MESSAGES / 1.05) }).bodies, 0.05, 3);
      consumer = await startConsumer({ ...queue.env, ...ledger.env, PREFETCH: '100', QUOTA_LIMITS: LIMITS, ENFORCEMENT_MODE: 'dry-run' });
      await consumer.connected();
      const c = consumer;
      // Glance notifies at a steady rate through the whole outage.
      publishing = queue.publish(bodies, { perSecond: PER_SECOND, signal: stopPublishing.signal });
      await waitUntil(
        () => c.committed >= 2_000,
        60_000,
        () => `2000 messages committed (${c.committed})`,
      );

      let before = 0;
      let after = 0;
      let storeErrorsSeen = 0;
      const outage = await withServiceStopped(kind, OUTAGE_MS, async ({ downAt }) => {
        await sleep(GRACE_MS);
        before = c.committed;
        // Watch until just before the restart: no batch acknowledged, the process alive.
        while (performance.now() < downAt + OUTAGE_MS - 200) {
          expect(c.exit, c.tail()).toBeUndefined();
          expect(c.committed).toBe(before);
          await sleep(100);
        }
        after = c.committed;
        storeErrorsSeen = c.logs.filter((l) => /store write failed/.test(String(l.msg))).length;
      });
      expect(outage.restartAt - outage.downAt).toBeGreaterThanOrEqual(OUTAGE_MS - 50);
      expect(after).toBe(before);
      // PostgreSQL: the transaction fails at once; it retries with backoff and says that nothing
      // was acknowledged. Redis: ioredis holds the script in its offline queue while it
      // reconnects (maxRetriesPerRequest=20 attempts, about 10 s), so the write may only wait.
      if (kind === 'postgres') expect(storeErrorsSeen).toBeGreaterThan(0);

      // Back: it resumes by itself and drains what piled up.
      await waitUntil(
        () => c.committed > after,
        60_000,
        () => `a commit after ${kind} came back:\n${c.tail()}`,
      );
      await publishing;
      await waitUntil(
        async () => (await queue!.ready()) === 0,
        120_000,
        () => `an empty queue (${c.committed} committed):\n${c.tail()}`,
      );
      expect(await consumer.stop(), consumer.tail()).toEqual({ code: 0, signal: null });
      expect(
        await queue.ready(),
        `messages back in the queue after a clean SIGTERM: the last ack did not reach the broker before the close\n${consumer.tail()}`,
      ).toBe(0);
      expect(await queue.dead()).toBe(0);

      const sharedStore = await ledger.open();
      const shared = decider(sharedStore, LIMITS);
      try {
        if (kind === 'postgres') {
          const replay = await replayInMemory(bodies, LIMITS);
          const comparison = await compareLedgers(shared, replay.pipeline);
          expect(comparison.differences).toEqual([]);
          expect(comparison.candidates).toBeGreaterThan(0);
        } else {
          // Redis came back empty: the ledger holds only what was applied after the restart.
          expect((await shared.ledger.projects()).length).toBeGreaterThan(0);
        }
      } finally {
        await sharedStore.close();
      }
      console.info(
        `${kind}: ${bodies.length} bodies at ${PER_SECOND}/s; down for ${((outage.restartAt - outage.downAt) / 1000).toFixed(1)} s ` +
          `with ${before} committed, still ${after} at the restart; ${storeErrorsSeen} failed store writes logged meanwhile`,
      );
    } finally {
      stopPublishing.abort();
      await publishing?.catch(() => {});
      if (consumer) await killAll([consumer]);
      await queue?.delete();
      await ledger?.cleanUp();
      release();
    }
  }, 180_000);
});
