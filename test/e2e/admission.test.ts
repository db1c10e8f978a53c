import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { envelope, inner, rawBody } from '../support/fixtures.js';
import { broker } from './support/consumer.js';
import { cli, enforcerEnv, lab, labEnv } from './support/lab.js';
import { startGate } from './support/gate.js';
import { startNginx } from './support/nginx.js';
import { scenario, until } from './support/scenario.js';

/*
 * Reject, not only clean up (issue 21): nginx in front of the lab's Glance, the shipped
 * deploy/nginx config asking the enforcer's admission endpoint (consume with ADMISSION_PORT)
 * before every request. A refused create never reaches Glance, so it leaves no row behind.
 */

const run = promisify(execFile);

/** Rows of the project in Glance's own database, soft-deleted ones included: what OSSN-0076 is about. */
async function glanceRows(projectId: string): Promise<number> {
  const db = `${labEnv('LAB_DIR')}/db/glance.sqlite`;
  const { stdout } = await run('sqlite3', ['-readonly', db, `SELECT count(*) FROM images WHERE owner = '${projectId.replace(/[^0-9a-f]/g, '')}'`]);
  return Number(stdout.trim());
}

const overLimit = (projectId: string, limit: number) =>
  `Project ${projectId} is over a limit for [Resource image_count_total is over limit of ${limit} due to current usage ${limit} and delta 1]`;

const { project, consumer, cleanup } = scenario();

async function gatedLab(env: NodeJS.ProcessEnv) {
  const c = await consumer({ ...env, ADMISSION_PORT: '0' });
  const listening = await c.waitFor(/admission endpoint listening/);
  const nginx = await startNginx({ glanceUrl: lab().glanceUrl, admissionPort: Number(listening.port) });
  cleanup.push(() => nginx.stop());
  return { c, nginx };
}

describe('the admission endpoint behind nginx, in front of the real Glance', () => {
  it("60 parallel creates against 0 of 5: exactly 5 are 201, 55 are 413 in Glance's words, and Glance gains exactly 5 rows", async () => {
    const p = await project('admission-flood');
    await p.setLimit('image_count_total', 5);
    const env = enforcerEnv(lab());
    const { c, nginx } = await gatedLab(env);

    const answers = await Promise.all(Array.from({ length: 60 }, (_, i) => p.createAt(nginx.url, `flood-${i}`)));
    const statuses = answers.map((a) => a.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(5);
    expect(statuses.filter((s) => s === 413)).toHaveLength(55);
    for (const refused of answers.filter((a) => a.status === 413)) {
      expect(refused.json.code).toBe('413 Request Entity Too Large');
      expect(refused.json.message).toContain(overLimit(p.id, 5));
    }
    expect(await glanceRows(p.id)).toBe(5);
    expect((await p.oracleUsage()).image_count_total).toBe(5);
    expect(await c.metric('gqe_admission_decisions_total', 'decision="deny",reason="over-limit"')).toBe(55);

    // Glance takes each of these as a create; through the gate each is refused (the ledger now
    // counts the 5, confirmed once on Glance's listing).
    for (const trick of ['//v2/images', '/v2//images', '/v2/images?x=1', '/v2/%69mages']) {
      const r = await p.createAt(nginx.url, 'trick', trick);
      expect({ trick, status: r.status }).toEqual({ trick, status: 413 });
      expect(r.json.message).toContain(overLimit(p.id, 5));
    }
    // Nor can a client speak for the proxy: its own X-Original-* and X-Quota-Deny-Status are replaced.
    const spoofed = await p.createAt(nginx.url, 'spoofed', '/v2/images', {
      'x-original-method': 'GET',
      'x-original-uri': '/v2/images/x',
      'x-quota-deny-status': '413',
    });
    expect(spoofed.status).toBe(413);
    expect(await glanceRows(p.id)).toBe(5);
    // Not a create: listing through the proxy is untouched.
    expect((await p.images()).size).toBe(5);

    // The enforcer stopped: nginx cannot reach the endpoint and lets the create through (fail
    // open); the enforcer's cleanup is the backstop when it comes back.
    expect(await c.stop()).toBe(0);
    const unchecked = await p.createAt(nginx.url, 'while-the-enforcer-is-down');
    expect(unchecked.status).toBe(201);
    expect(await glanceRows(p.id)).toBe(6);
  }, 120_000);

  it('gate, beside consume on its ledger, refuses past the limit and exits 0 on SIGTERM', async () => {
    const p = await project('admission-gate');
    await p.setLimit('image_count_total', 2);
    const env = enforcerEnv(lab());
    // The consumer keeps the ledger (and ends reservations); the gate only answers the proxy.
    await consumer(env);
    const gate = await startGate(env);
    const nginx = await startNginx({ glanceUrl: lab().glanceUrl, admissionPort: gate.port });
    cleanup.push(() => nginx.stop());
    const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => p.createAt(nginx.url, `gate-${i}`)));
    expect(answers.map((a) => a.status).sort()).toEqual([201, 201, 413, 413, 413, 413]);
    expect(await glanceRows(p.id)).toBe(2);
    const metrics = await (await fetch(`http://127.0.0.1:${gate.metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/^gqe_admission_decisions_total\{decision="deny",reason="over-limit"\} 4$/m);
    expect(await gate.stop()).toBe(0);
  }, 120_000);

  it("a forged image.create for a project at its limit does not stop its owner's allowed create", async () => {
    const p = await project('admission-forged');
    await p.setLimit('image_count_total', 2);
    const env = enforcerEnv(lab());
    const { nginx } = await gatedLab(env);
    expect((await p.createAt(nginx.url, 'real-1')).status).toBe(201);
    await until(
      'the ledger counts the real image',
      Date.now() + 20_000,
      () => ledgerCount(env, p.id),
      (n) => n === 1,
    );

    // Someone with publish rights on Glance's exchange "creates" an image for the project: the
    // ledger says 2 of 2, Glance has 1.
    const template = inner(rawBody('image.create'));
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const b = await broker();
    b.channel.publish(
      'glance',
      'notifications.info',
      Buffer.from(
        envelope({
          ...template,
          message_id: randomUUID(),
          _unique_id: randomUUID().replaceAll('-', ''),
          timestamp: now.replace('T', ' ').replace('Z', '.000000'),
          payload: { ...template.payload, id: randomUUID(), owner: p.id, status: 'queued', created_at: now, updated_at: now },
        }),
      ),
    );
    await b.channel.waitForConfirms();
    await b.close();
    await until(
      'the ledger counts the forged image',
      Date.now() + 20_000,
      () => ledgerCount(env, p.id),
      (n) => n === 2,
    );

    // The owner's second create is within Glance's count: allowed at once (the endpoint confirms
    // the limit on Glance's listing), and the third is refused.
    const started = Date.now();
    const second = await p.createAt(nginx.url, 'real-2');
    expect(second.status).toBe(201);
    expect(Date.now() - started).toBeLessThan(3_000);
    const third = await p.createAt(nginx.url, 'real-3');
    expect(third.status).toBe(413);
    expect(await glanceRows(p.id)).toBe(2);
  }, 120_000);
});

/** The project's image count in the consumer's ledger, through the CLI as an operator reads it. */
async function ledgerCount(env: NodeJS.ProcessEnv, projectId: string): Promise<number> {
  const r = await cli(['status', '--project', projectId, '--json'], env);
  if (r.code !== 0) throw new Error(`status exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout).projects[0]?.usage.image_count_total ?? 0;
}
