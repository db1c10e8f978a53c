import { describe, expect, it } from 'vitest';
import { killAll, startConsumers, waitUntil, type ConsumerProcess } from '../support/consumers.js';
import { generateHistory, withDuplicates } from '../support/generate.js';
import { compareLedgers, decider, replayInMemory } from '../support/ledger-oracle.js';
import { freshLedger, freshQueue, holdService, requireServices, type TestLedger, type TestQueue } from '../support/services.js';

/**
 * Scale-out: four `consume` processes on one queue share one PostgreSQL or Redis ledger. An
 * operator runs several replicas for throughput and availability, and one of them is killed
 * (OOM, node drain) in the middle of a flood. The shared ledger must end exactly where a single
 * `replay` of the same bodies ends: same records, same usage, and the same images to delete.
 */

const MESSAGES = 20_000;
/** Realistic limits: with 100 projects, some are over the count and the create rate, so there are candidates. */
const LIMITS = 'image_count_total=20,image_size_total=51200,image_create_rate=10/60s';
const PREFETCH = '100';

describe.each(['postgres', 'redis'] as const)('%s: one ledger shared by four consume processes', (kind) => {
  it('equals a single-process replay after 20k messages with duplicates and a consumer killed half-way', async () => {
    await requireServices(kind, 'rabbitmq');
    const release = await holdService(kind);
    let ledger: TestLedger | undefined;
    let queue: TestQueue | undefined;
    let consumers: ConsumerProcess[] = [];
    let publishing: Promise<void> | undefined;
    const stopPublishing = new AbortController();
    try {
      ledger = await freshLedger(kind);
      queue = await freshQueue('it-shared');
      // About 5% of the bodies come twice, up to 2000 positions later, as a publisher retry or
      // a redelivery after a consumer restart puts them on the wire.
      const history = generateHistory({ seed: 20_251_126, projects: 100, messages: Math.round(MESSAGES / 1.05) }).bodies;
      const bodies = withDuplicates(history, 0.05, 7);
      const half = Math.floor(bodies.length / 2);

      // Half the stream waits in the queue (the consumers were down); the rest arrives while they run.
      await queue.publish(bodies.slice(0, half));
      consumers = await startConsumers(4, { ...queue.env, ...ledger.env, PREFETCH, QUOTA_LIMITS: LIMITS, ENFORCEMENT_MODE: 'dry-run' });
      publishing = queue.publish(bodies.slice(half), { signal: stopPublishing.signal });
      const [victim, ...survivors] = consumers as [ConsumerProcess, ...ConsumerProcess[]];
      const committed = () => consumers.reduce((n, c) => n + c.committed, 0);

      // kill -9 half-way: the batch it holds (committed or not) is redelivered to the others.
      await waitUntil(
        () => committed() >= half && victim.committed > 0,
        60_000,
        () => `half of ${bodies.length} committed (${committed()})`,
      );
      const killedAt = committed();
      expect((await victim.kill()).signal).toBe('SIGKILL');
      await publishing;

      // Everything delivered; then SIGTERM, which commits and acknowledges what each one holds.
      await waitUntil(
        async () => (await queue!.ready()) === 0,
        120_000,
        () => `an empty queue (${committed()} committed)`,
      );
      const exits = await Promise.all(survivors.map((c) => c.stop()));
      expect(exits, survivors.map((c) => c.tail()).join('\n')).toEqual(survivors.map(() => ({ code: 0, signal: null })));
      // Nothing went back unacknowledged when they closed, and nothing was poison.
      expect(await queue.ready(), 'messages back in the queue after a clean SIGTERM: a last ack did not reach the broker before the close').toBe(0);
      expect(await queue.dead()).toBe(0);

      const replay = await replayInMemory(bodies, LIMITS);
      const sharedStore = await ledger.open();
      const shared = decider(sharedStore, LIMITS);
      try {
        const comparison = await compareLedgers(shared, replay.pipeline);
        expect(comparison.differences).toEqual([]);
        // The limits bite: the comparison covers real deletion candidates.
        expect(comparison.overProjects).toBeGreaterThan(5);
        expect(comparison.candidates).toBeGreaterThan(100);
        // Each message was applied once across all consumers: the killed one's last batch may
        // have been applied without being reported, and its redelivery is then a duplicate.
        const applied = consumers.reduce((n, c) => n + c.results.applied, 0);
        const duplicates = consumers.reduce((n, c) => n + c.results.duplicate, 0);
        expect(applied).toBeLessThanOrEqual(replay.counts.applied);
        expect(applied + duplicates).toBeGreaterThanOrEqual(replay.counts.applied + replay.counts.duplicate);
        console.info(
          `${kind}: ${bodies.length} bodies, ${comparison.projects} projects, ${comparison.images} images, ` +
            `${comparison.overProjects} projects over, ${comparison.candidates} candidates; consumer ${victim.pid} killed at ` +
            `${killedAt} committed; per consumer committed ${consumers.map((c) => c.committed).join('/')}, ` +
            `applied ${applied} (replay ${replay.counts.applied}), duplicates ${duplicates} (replay ${replay.counts.duplicate})`,
        );
      } finally {
        await sharedStore.close();
      }
    } finally {
      stopPublishing.abort();
      await publishing?.catch(() => {});
      await killAll(consumers);
      await queue?.delete();
      await ledger?.cleanUp();
      release();
    }
  }, 240_000);
});
