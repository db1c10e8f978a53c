import { afterEach, describe, expect, it } from 'vitest';
import { cli, enforcerEnv, lab, TestProject } from './support/lab.js';

/*
 * An operator's day against the real lab: a tenant floods queued images past its Keystone limit
 * on a Glance that does not enforce limits itself; `reconcile` must delete exactly the newest
 * queued ones and its ledger must agree with Glance's own count (the oracle glance-api).
 */

const projects: TestProject[] = [];
afterEach(async () => {
  for (const p of projects.splice(0)) await p.remove();
});

async function project(label: string): Promise<TestProject> {
  const p = await TestProject.create(lab(), label);
  projects.push(p);
  return p;
}

/** 7 queued images and 1 active one, created in order, a second apart so created_at orders them. */
async function flood(p: TestProject): Promise<{ queued: string[]; active: string }> {
  const queued: string[] = [];
  const active = await p.createImage('active-0');
  await p.upload(active, 3 * 1024 * 1024 + 5);
  for (let i = 1; i <= 7; i++) {
    await new Promise((r) => setTimeout(r, 1_050));
    queued.push(await p.createImage(`queued-${i}`));
  }
  return { queued, active };
}

const FOUR = ['image_count_total', 'image_count_uploading', 'image_size_total', 'image_stage_total'];

describe('reconcile against real Keystone and Glance', () => {
  it('deletes exactly the 3 newest queued images of a project with a limit of 5, and agrees with the oracle', async () => {
    const over = await project('over');
    const bystander = await project('bystander');
    await over.setLimit('image_count_total', 5);
    const { queued, active } = await flood(over);
    const spare = await bystander.createImage('bystander-queued');
    const env = enforcerEnv(lab());

    const r = await cli(['reconcile', '--project', over.id, '--json'], env);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.mode).toBe('enforce');
    // Deleted ENFORCE_CONCURRENCY at a time, and audited as each finishes: in any order.
    const byId = (a: { image_id: string }, b: { image_id: string }) => a.image_id.localeCompare(b.image_id);
    expect([...out.projects[0].actions].sort(byId)).toEqual(
      queued
        .slice(4)
        .map((id) => ({ image_id: id, action: 'deleted', reason: `queued image past image_count_total (Glance said: queued, owner ${over.id})` }))
        .sort(byId),
    );
    const left = await over.images();
    expect([...left.keys()].sort()).toEqual([active, ...queued.slice(0, 4)].sort());
    expect(await bystander.images()).toEqual(new Map([[spare, 'queued']]));

    const status = await cli(['status', '--project', over.id, '--json'], env);
    const [s] = JSON.parse(status.stdout).projects;
    const oracle = await over.oracleUsage();
    for (const k of FOUR) expect({ [k]: s.usage[k] }).toEqual({ [k]: oracle[k] });
    expect(s).toMatchObject({ project_id: over.id, limits: { image_count_total: 5 }, over: [] });
    expect(s.usage).toMatchObject({ image_count_total: 5, image_size_total: 3 });

    // The untouched project: its ledger from a reconcile of everything equals Glance's count too.
    await cli(['reconcile', '--json'], env);
    const other = JSON.parse((await cli(['status', '--project', bystander.id, '--json'], env)).stdout).projects[0];
    const otherOracle = await bystander.oracleUsage();
    for (const k of FOUR) expect({ [k]: other.usage[k] }).toEqual({ [k]: otherOracle[k] });
    expect(await bystander.images()).toEqual(new Map([[spare, 'queued']]));
  }, 120_000);

  it('in dry-run deletes nothing and records the same 3 would-deletes', async () => {
    const over = await project('dry');
    await over.setLimit('image_count_total', 5);
    const { queued } = await flood(over);
    const env = enforcerEnv(lab());

    const r = await cli(['reconcile', '--project', over.id, '--dry-run', '--json'], env);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.mode).toBe('dry-run');
    expect(out.projects[0].actions.map((a: { image_id: string; action: string }) => [a.image_id, a.action]).sort()).toEqual(
      queued
        .slice(4)
        .map((id) => [id, 'would-delete'])
        .sort(),
    );
    expect((await over.images()).size).toBe(8);
    // A second run finds the same candidates; the audit keeps each would-delete once.
    const again = JSON.parse((await cli(['reconcile', '--project', over.id, '--dry-run', '--json'], env)).stdout);
    expect(again.actions.would_delete).toBe(3);
  }, 120_000);

  it('unprotects and deletes a protected queued image past the limit in its own place; with report, keeps it and deletes nothing instead', async () => {
    const p = await project('protected');
    await p.setLimit('image_count_total', 2);
    const a = await p.createImage('a');
    await new Promise((r) => setTimeout(r, 1_050));
    const b = await p.createImage('b');
    await new Promise((r) => setTimeout(r, 1_050));
    const guarded = await p.createImage('guarded', { protected: true });

    const kept = JSON.parse((await cli(['reconcile', '--project', p.id, '--json'], enforcerEnv(lab(), { PROTECTED_QUEUED_IMAGES: 'report' }))).stdout);
    expect(kept.projects[0].actions).toEqual([
      { image_id: guarded, action: 'protected', reason: expect.stringMatching(/protected and PROTECTED_QUEUED_IMAGES=report/) },
    ]);
    expect([...(await p.images()).keys()].sort()).toEqual([a, b, guarded].sort());

    const out = JSON.parse((await cli(['reconcile', '--project', p.id, '--json'], enforcerEnv(lab()))).stdout);
    expect(out.projects[0].actions).toEqual([{ image_id: guarded, action: 'deleted', reason: expect.stringMatching(/protected flag was cleared first/) }]);
    expect([...(await p.images()).keys()].sort()).toEqual([a, b].sort());
  }, 60_000);
});

describe('credentials', () => {
  it('fails fast on a wrong password, with a clear message and no secret in it', async () => {
    const secret = 'Wr0ng-Secret-Do-Not-Print';
    const started = Date.now();
    const r = await cli(['reconcile'], enforcerEnv(lab(), { OS_PASSWORD: secret }));
    expect(r.code).not.toBe(0);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(r.stderr).toMatch(/401|authenticat/i);
    expect(r.stderr).toMatch(/enforcer|OS_PASSWORD|OS_USERNAME/);
    expect(r.stderr + r.stdout).not.toContain(secret);
  });

  it('says which identity is missing when none is configured', async () => {
    const r = await cli(['reconcile'], { PATH: process.env.PATH, STORE_URL: 'memory://' });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/OS_AUTH_URL.*OS_CLOUD/);
  });
});
