import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { broker } from './support/consumer.js';
import { cli, enforcerEnv, lab } from './support/lab.js';
import { oldest, scenario, until } from './support/scenario.js';

/*
 * The main job against the real lab: `consume` on the oslo.messaging bus while a tenant floods
 * queued images past its Keystone limit through a Glance that does not enforce limits itself.
 */

const { cleanup, project, consumer } = scenario();

const FOUR = ['image_count_total', 'image_count_uploading', 'image_size_total', 'image_stage_total'];

describe('consume against real Keystone, Glance and RabbitMQ', () => {
  it('keeps a flooded project at its limit of 5: the 5 oldest remain within 10 s, others untouched, status equals the oracle', async () => {
    const p = await project('flood');
    const bystander = await project('bystander');
    const spare = await bystander.createImage('spare');
    await p.setLimit('image_count_total', 5);
    const env = enforcerEnv(lab());
    const c = await consumer(env);

    const created = await p.flood(200);
    const lastCreate = Date.now();
    const left = await until(
      'images left',
      lastCreate + 10_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    // The figure the closing notes report: how long after the last create the project is at its limit.
    console.info(`flood of 200 against 5 (project ${p.id}): converged ${((Date.now() - lastCreate) / 1000).toFixed(1)} s after the last create`);
    expect([...left.keys()].sort()).toEqual(oldest(created, 5));
    expect(await bystander.images()).toEqual(new Map([[spare, 'queued']]));

    // The ledger catches up with the deletions' own notifications; then it equals Glance's count.
    const oracle = await p.oracleUsage();
    const status = await until(
      'status',
      Date.now() + 10_000,
      async () => JSON.parse((await cli(['status', '--project', p.id, '--json'], env)).stdout).projects[0],
      (s) => s?.usage.image_count_total === 5,
    );
    for (const k of FOUR) expect({ [k]: status.usage[k] }).toEqual({ [k]: oracle[k] });
    expect(await c.metric('gqe_actions_total', 'action="deleted"')).toBe(195);
    expect(await c.stop()).toBe(0);
  }, 120_000);

  it('in dry-run deletes nothing and records 195 would-deletes', async () => {
    const p = await project('dry');
    await p.setLimit('image_count_total', 5);
    const env = enforcerEnv(lab(), { ENFORCEMENT_MODE: 'dry-run' });
    const c = await consumer(env);

    await p.flood(200);
    const recorded = await until(
      'would-deletes',
      Date.now() + 20_000,
      async () => {
        const out = JSON.parse((await cli(['actions', '--project', p.id, '--json'], env)).stdout);
        return out.actions.filter((a: { action: string }) => a.action === 'would-delete').length;
      },
      (n) => n >= 195,
    );
    expect(recorded).toBe(195);
    await new Promise((r) => setTimeout(r, 2_000));
    expect((await p.images()).size).toBe(200);
    expect(JSON.parse((await cli(['actions', '--project', p.id, '--json'], env)).stdout).actions.length).toBe(195);
    expect(await c.metric('gqe_actions_total', 'action="deleted"')).toBe(0);
  }, 120_000);

  it('survives a RabbitMQ restart in the middle of the flood: still exactly the 5 oldest, nothing lost', async () => {
    const p = await project('restart');
    await p.setLimit('image_count_total', 5);
    const c = await consumer(enforcerEnv(lab()));

    const first = await p.flood(80, 'before');
    execFileSync('rabbitmqctl', ['stop_app'], { stdio: 'ignore', timeout: 60_000 });
    // Glance keeps accepting creates while its notifier waits for the broker.
    const during = p.flood(40, 'during');
    await new Promise((r) => setTimeout(r, 3_000));
    execFileSync('rabbitmqctl', ['start_app'], { stdio: 'ignore', timeout: 60_000 });
    const rest = [...(await during), ...(await p.flood(80, 'after'))];
    const left = await until(
      'images left',
      Date.now() + 30_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    expect([...left.keys()].sort()).toEqual(oldest([...first, ...rest], 5));
    expect(c.logs.some((l) => /reconnecting to the broker/.test(String(l.msg)))).toBe(true);
  }, 180_000);

  it('dead-letters 1,000 poison messages mixed into the stream, with the reason, and still counts every valid one', async () => {
    const p = await project('poison');
    await p.setLimit('image_count_total', 5);
    const c = await consumer(enforcerEnv(lab()));
    const b = await broker();
    cleanup.push(() => b.close());

    const poison = [
      'not json',
      '{"oslo.version": "2.0", "oslo.message": "{"}',
      JSON.stringify({ message_id: 'x', event_type: 'image.create', priority: 'INFO', payload: { id: 'i' }, timestamp: 'yesterday', publisher_id: 'p' }),
    ];
    const publishing = (async () => {
      for (let i = 0; i < 1000; i++) {
        b.channel.publish('glance', 'notifications.info', Buffer.from(poison[i % poison.length]!), { contentType: 'application/json' });
        if (i % 100 === 99) await b.channel.waitForConfirms();
      }
      await b.channel.waitForConfirms();
    })();
    const created = await p.flood(200);
    await publishing;

    const dead = await until(
      'dead letters',
      Date.now() + 20_000,
      () => b.count(`${c.queue}.dead`),
      (n) => n >= 1000,
    );
    expect(dead).toBe(1000);
    expect(await c.metric('gqe_messages_total', 'result="invalid"')).toBe(1000);
    const left = await until(
      'images left',
      Date.now() + 15_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    expect([...left.keys()].sort()).toEqual(oldest(created, 5));
    const msg = await b.channel.get(`${c.queue}.dead`, { noAck: true });
    expect(msg && String(msg.properties.headers?.['x-gqe-reason'])).toMatch(/not JSON|oslo message|oslo\.message/);
  }, 120_000);
});
