import { describe, expect, it } from 'vitest';
import { envelope, inner, rawBody } from '../support/fixtures.js';
import { broker, startConsumer, type RunningConsumer } from './support/consumer.js';
import { enforcerEnv, lab } from './support/lab.js';
import { oldest, scenario, until } from './support/scenario.js';

/*
 * Issue 10 on the real lab: what an attacker with publish rights on Glance's exchange sends first
 * must not stop `consume`. Two poison messages that once stopped it for good (a 65,400-byte header
 * RabbitMQ accepts; a notification with a 300 KB message_id), then a flood against a limit of 5:
 * still exactly 5 left, and SIGTERM exits 0 within 15 s.
 */

const { cleanup, project, consumer, removeAfter } = scenario();

/** SIGTERM, and how long the process took to exit. */
async function timedStop(c: RunningConsumer): Promise<{ code: number | null; ms: number }> {
  const started = Date.now();
  const code = await c.stop();
  return { code, ms: Date.now() - started };
}

describe('hostile input against consume on the real lab', () => {
  it('two poison messages first, then 30 creates against a limit of 5: exactly 5 left, both dead-lettered, SIGTERM exits 0 within 15 s', async () => {
    const p = await project('hostile');
    await p.setLimit('image_count_total', 5);
    const c = await consumer(enforcerEnv(lab()));
    const b = await broker();
    cleanup.push(() => b.close());

    // A poison body with a 65,400-byte header: RabbitMQ accepts it; amqplib could not send it on.
    b.channel.publish('glance', 'notifications.info', Buffer.from('garbage'), {
      contentType: 'application/json',
      headers: { 'x-padding': 'p'.repeat(65_400) },
    });
    // A schema-invalid notification naming the project, with a 300 KB message_id.
    const msg = inner(rawBody('image.create'));
    msg.message_id = 'm'.repeat(300_000);
    msg.payload.owner = p.id;
    b.channel.publish('glance', 'notifications.info', Buffer.from(envelope(msg)), { contentType: 'application/json' });
    await b.channel.waitForConfirms();

    const created = await p.flood(30);
    const left = await until(
      'images left',
      Date.now() + 20_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    expect([...left.keys()].sort()).toEqual(oldest(created, 5));

    const dead = await until(
      'dead letters',
      Date.now() + 10_000,
      () => b.count(`${c.queue}.dead`),
      (n) => n >= 2,
    );
    expect(dead).toBe(2);
    const reasons: string[] = [];
    for (let m = await b.channel.get(`${c.queue}.dead`, { noAck: true }); m; m = await b.channel.get(`${c.queue}.dead`, { noAck: true })) {
      reasons.push(String(m.properties.headers?.['x-gqe-reason']));
    }
    expect(reasons.sort()).toEqual([
      expect.stringMatching(/^body is not JSON/),
      expect.stringMatching(/^oslo message: message_id: expected oslo's message id/),
    ]);
    expect(reasons.every((r) => Buffer.byteLength(r) <= 1024)).toBe(true);
    expect(await c.metric('gqe_messages_total', 'result="invalid"')).toBe(2);
    expect(await b.count(c.queue)).toBe(0);
    // Nothing is stuck: the consumer says it is ready, its batches flowing.
    const ready = await fetch(`http://127.0.0.1:${c.port}/readyz`);
    expect({ status: ready.status, body: await ready.json() }).toEqual({
      status: 200,
      body: { limits: 'keystone', broker: 'connected', store: 'ok', batch: 'flowing' },
    });

    const { code, ms } = await timedStop(c);
    expect(code).toBe(0);
    expect(ms).toBeLessThan(15_000);
    console.info(`SIGTERM after the flood: exit ${code} in ${ms} ms`);
  }, 120_000);

  it('SIGTERM in the middle of a flood exits 0 within 15 s; the next start finds the backlog and keeps exactly 5', async () => {
    const p = await project('sigterm');
    await p.setLimit('image_count_total', 5);
    const env = enforcerEnv(lab(), { SHUTDOWN_SECONDS: '10' });
    const first = removeAfter(await startConsumer(env));
    const flood = p.flood(60);
    // Stopped while Glance's notifications of the flood are still arriving and being enforced.
    await first.waitFor(/image deleted/, 30_000);
    const { code, ms } = await timedStop(first);
    const created = await flood;
    expect(code).toBe(0);
    expect(ms).toBeLessThan(15_000);
    console.info(`SIGTERM mid-flood: exit ${code} in ${ms} ms`);

    // The same ledger: the reconcile at start finds what was left undone.
    const restarted = Date.now();
    const second = await consumer(env);
    const left = await until(
      'images left after the restart',
      Date.now() + 60_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    console.info(`after the restart: ${created.length} created, 5 left ${Date.now() - restarted} ms after the start`);
    expect([...left.keys()].sort()).toEqual(oldest(created, 5));
    expect(await timedStop(second).then((s) => s.code)).toBe(0);
  }, 180_000);
});
