import { afterEach, describe, expect, it } from 'vitest';
import { freshLedger, holdService, type TestLedger } from '../support/services.js';
import { enforcerEnv, lab } from './support/lab.js';
import { oldest, scenario, until } from './support/scenario.js';

/*
 * Replicas sharing one ledger (a Deployment of 3 `consume` over PostgreSQL or Redis): each on a
 * queue of its own, so each gets every notification and each would decide the project, the worst
 * case. The project's lease in the shared store lets one of them decide at a time, and at most
 * once per ENFORCE_INTERVAL_SECONDS: every image past the limit is deleted, and audited, once.
 */

const { project, consumer } = scenario();
const ledgers: TestLedger[] = [];
/** The service's lock, so that no suite stops the ledger's server under the replicas (test/support/services.ts). */
const releases: (() => void)[] = [];
afterEach(async () => {
  for (const l of ledgers.splice(0)) await l.cleanUp().catch(() => {});
  for (const release of releases.splice(0)) release();
});

describe.each(['postgres', 'redis'] as const)('three consume replicas on one %s ledger', (kind) => {
  it('100 creates against 5: exactly the 5 oldest remain, and each deleted image has exactly one `deleted` audit row', async () => {
    releases.push(await holdService(kind));
    const ledger = await freshLedger(kind);
    ledgers.push(ledger);
    const p = await project(`replicas-${kind}`);
    await p.setLimit('image_count_total', 5);
    const env = enforcerEnv(lab(), ledger.env);
    const replicas = await Promise.all([consumer(env), consumer(env), consumer(env)]);
    const created = await p.flood(100, 'replica');
    const left = await until(
      'images left',
      Date.now() + 90_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    const keep = oldest(created, 5);
    expect([...left.keys()].sort()).toEqual(keep);

    // Let any decision still under way finish before reading the audit.
    await new Promise((r) => setTimeout(r, 6_000));
    const store = await ledger.open();
    try {
      const audit = await store.actions({ projectId: p.id });
      const deleted = audit.filter((a) => a.action === 'deleted').map((a) => a.imageId);
      const expected = created.map((i) => i.id).filter((id) => !keep.includes(id));
      expect(deleted.length).toBe(95);
      expect([...deleted].sort()).toEqual(expected.sort());
      const byReplica = replicas.map((r) => r.logs.filter((l) => l.msg === 'image deleted').length);
      const asked = replicas.map((r) => r.logs.filter((l) => l.msg === 'ledger says over quota; asking Glance').length);
      console.info(
        `${kind}: 95 deleted, audited once each; deletions by replica ${byReplica.join('/')}; decisions asked of Glance by replica ${asked.join('/')}; other audit rows: ${audit.length - deleted.length}`,
      );
      expect(byReplica.reduce((a, b) => a + b, 0)).toBe(95);
    } finally {
      await store.close();
    }
  }, 240_000);
});
