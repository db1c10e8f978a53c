import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { envelope, inner, rawBody } from '../support/fixtures.js';
import { broker } from './support/consumer.js';
import { scenario, until } from './support/scenario.js';
import { enforcerEnv, lab } from './support/lab.js';

/*
 * The trust model on the real lab: anyone with publish rights on Glance's exchange (in many clouds
 * every service and compute node shares one RabbitMQ user) can forge notifications. The bus is a
 * trigger and an estimate; every deletion is decided on Glance's own listing of the project.
 */

const utcIso = (d: Date) => d.toISOString().replace(/\.\d+Z$/, 'Z');
const osloTime = (d: Date) => d.toISOString().replace('T', ' ').replace('Z', '000');

/** A notification as Glance would publish it, for an image and moment of the forger's choosing. */
function forged(eventType: 'image.create' | 'image.delete', owner: string, imageId: string, when: Date): string {
  const template = inner(rawBody(eventType === 'image.create' ? 'image.create' : 'image.delete'));
  return envelope({
    ...template,
    message_id: randomUUID(),
    _unique_id: randomUUID().replaceAll('-', ''),
    timestamp: osloTime(when),
    payload: {
      ...template.payload,
      id: imageId,
      owner,
      created_at: utcIso(when),
      updated_at: utcIso(when),
      ...(eventType === 'image.delete' ? { deleted_at: utcIso(when) } : {}),
    },
  });
}

async function publish(bodies: readonly string[]): Promise<void> {
  const b = await broker();
  try {
    for (const body of bodies) b.channel.publish('glance', 'notifications.info', Buffer.from(body), { contentType: 'application/json' });
    await b.channel.waitForConfirms();
  } finally {
    await b.close();
  }
}

const { project, consumer } = scenario();

describe('forged notifications on the real bus cost no real image and hide none for long', () => {
  it('forged creates for a project at its limit delete nothing; Glance still counts 3', async () => {
    const p = await project('forged-creates');
    await p.setLimit('image_count_total', 3);
    const real = [await p.createImage('r1'), await p.createImage('r2'), await p.createImage('r3')];
    const c = await consumer(enforcerEnv(lab()));

    // Ten images Glance never had, "created" in 2024: the ledger says 13 against a limit of 3.
    await publish(Array.from({ length: 10 }, (_, i) => forged('image.create', p.id, randomUUID(), new Date(Date.UTC(2024, 5, 1, 0, 0, i)))));
    const corrected = await until(
      'ledger corrections',
      Date.now() + 20_000,
      () => c.metric('gqe_ledger_corrections_total', 'kind="vanished"'),
      (n) => n >= 10,
    );
    expect(corrected).toBe(10);
    // Give any wrong deletion time to happen, then look.
    await new Promise((r) => setTimeout(r, 2_000));
    expect([...(await p.images()).keys()].sort()).toEqual([...real].sort());
    expect((await p.oracleUsage()).image_count_total).toBe(3);
    expect(await c.metric('gqe_actions_total', 'action="deleted"')).toBe(0);
  }, 90_000);

  it('forged deletes cannot buy a project more images: back to exactly its 3 within one RECONCILE_INTERVAL', async () => {
    const p = await project('forged-deletes');
    await p.setLimit('image_count_total', 3);
    const real = [await p.createImage('r1'), await p.createImage('r2'), await p.createImage('r3')];
    const c = await consumer(enforcerEnv(lab(), { RECONCILE_INTERVAL: '20' }));

    // Deletes for the three real images, dated in 2099 (refused at the door as from the future)
    // and dated now (believed by the ledger: the bus cannot be told from Glance here).
    await publish([
      ...real.map((id) => forged('image.delete', p.id, id, new Date(Date.UTC(2099, 0, 1)))),
      ...real.map((id) => forged('image.delete', p.id, id, new Date())),
    ]);
    await new Promise((r) => setTimeout(r, 1_000));
    // One more create: the ledger, fooled, counts 1 of 3; Glance has 4. The periodic reconcile
    // lists the project and deletes the newest.
    const extra = await p.createImage('extra');
    const started = Date.now();
    const left = await until(
      'images left',
      started + 30_000,
      () => p.images(),
      (m) => m.size === 3,
    );
    expect([...left.keys()].sort()).toEqual([...real].sort());
    expect((await p.oracleUsage()).image_count_total).toBe(3);
    expect(left.has(extra)).toBe(false);

    // Four more at once: the ledger's own count (1 + 4 = 5 > 3, or more once repaired) triggers
    // enforcement at once, and its listing sees all 7: the 4 newest go.
    const more = await p.flood(4, 'more');
    const after = await until(
      'images left',
      Date.now() + 15_000,
      () => p.images(),
      (m) => m.size === 3 && !more.some((i) => m.has(i.id)),
    );
    expect([...after.keys()].sort()).toEqual([...real].sort());
    expect(await c.metric('gqe_ledger_corrections_total', 'kind="resurrected"')).toBeGreaterThanOrEqual(3);
  }, 120_000);
});
