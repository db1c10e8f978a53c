import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { cli, enforcerEnv, lab } from './support/lab.js';
import { oldest, scenario, until } from './support/scenario.js';

/*
 * A tenant on its own, with nothing but its own token, tries to escape the quota with what it can
 * put in a create: `protected`, which Glance lets an owner set and then refuses to DELETE even
 * for an admin; megabytes of properties, which make every notification of the image too large to
 * parse. `consume` runs against the real lab throughout.
 */

const { project, consumer } = scenario();
const BIN = join(import.meta.dirname, '..', '..', 'bin', 'glance-quota-enforcer.js');
/** A property Glance takes at create: 1.2 MB of it makes each notification of the image ~1.2 MB. */
const FAT = { fat_property: 'x'.repeat(1_200_000) };

describe('a tenant on its own cannot escape the quota', () => {
  it('40 protected creates against 5: exactly the 5 oldest remain within 60 s', async () => {
    const p = await project('protected');
    await p.setLimit('image_count_total', 5);
    const env = enforcerEnv(lab());
    await consumer(env);
    const created = await p.flood(40, 'protected', { protected: true });
    const left = await until(
      'images left',
      Date.now() + 60_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    expect([...left.keys()].sort()).toEqual(oldest(created, 5));
    // Each of the 35 is audited once, as deleted after its flag was cleared.
    const actions = JSON.parse((await cli(['actions', '--project', p.id, '--json'], env)).stdout).actions as { action: string; reason: string }[];
    expect(actions.map((a) => a.action)).toEqual(Array(35).fill('deleted'));
    expect(actions.every((a) => /protected flag was cleared first/.test(a.reason))).toBe(true);
  }, 120_000);

  it('30 creates with 1.2 MB properties against 5: 5 remain within 60 s, and consume stays alive', async () => {
    const p = await project('fat');
    await p.setLimit('image_count_total', 5);
    const c = await consumer(enforcerEnv(lab()));
    const created = await p.flood(30, 'fat', FAT);
    const left = await until(
      'images left',
      Date.now() + 60_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    expect([...left.keys()].sort()).toEqual(oldest(created, 5));
    // Every create was over MAX_MESSAGE_BYTES: dead-lettered, and still a trigger.
    expect(await c.metric('gqe_messages_total', 'result="invalid"')).toBeGreaterThanOrEqual(30);
    expect(c.logs.some((l) => /counted from a scan/.test(String(l.reason)))).toBe(true);
    expect((await fetch(`http://127.0.0.1:${c.port}/healthz`)).status).toBe(200);
  }, 180_000);

  it('100 images with 1.2 MB properties are listed with a peak RSS under 250 MB', async () => {
    const p = await project('fat-listing');
    await p.setLimit('image_count_total', 1_000);
    for (let i = 0; i < 100; i += 20) await p.flood(20, `fat-${i}`, FAT);
    const run = promisify(execFile);
    // The process's own peak RSS, printed at exit (kB, as getrusage gives it).
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the ${} belongs to the JavaScript this string is
    const peak = 'data:text/javascript,process.on("exit",()=>process.stderr.write(`maxrss_kb=${process.resourceUsage().maxRSS}\\n`))';
    const { stdout, stderr } = await run(process.execPath, ['--import', peak, BIN, 'reconcile', '--project', p.id, '--json'], {
      env: enforcerEnv(lab()),
      timeout: 120_000,
      maxBuffer: 64 * 1024 * 1024,
    });
    const summary = JSON.parse(stdout);
    expect(summary.listed).toBe(100);
    const peakMb = Number(/maxrss_kb=(\d+)/.exec(stderr)![1]) / 1024;
    console.info(`reconcile of a project of 100 images with 1.2 MB properties: peak RSS ${peakMb.toFixed(0)} MB`);
    expect(peakMb).toBeLessThan(250);
  }, 300_000);
});
