import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { openStore } from '../../src/store/index.js';
import { ev, MiB } from '../support/events.js';
import { describeLedgerStore } from './ledger-store.contract.js';

const dir = mkdtempSync(join(tmpdir(), 'gqe-sqlite-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const freshPath = () => join(dir, `ledger-${++n}.db`);

describeLedgerStore('sqlite', async () => SqliteStore.open(freshPath()));

describe('sqlite: a file on disk', () => {
  it('keeps the ledger and the processed ids across a restart', async () => {
    const path = freshPath();
    const a = ev({ imageId: 'a', status: 'active', size: 2 * MiB });
    const first = SqliteStore.open(path);
    await first.applyEvents([a], 1);
    await first.close();
    const again = SqliteStore.open(path);
    expect((await again.applyEvents([a], 2)).outcomes).toEqual(['duplicate']);
    expect((await again.usage('p1')).image_size_total).toBe(2);
    await again.close();
  });

  it('commits a batch whole or not at all', async () => {
    const path = freshPath();
    const store = SqliteStore.open(path);
    // A second connection plants a failure on one image, as a full disk or a lock timeout would.
    const saboteur = new Database(path);
    saboteur.exec(`CREATE TRIGGER boom BEFORE INSERT ON images WHEN NEW.image_id = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END`);
    saboteur.close();
    const ok = ev({ imageId: 'ok', status: 'active', size: MiB });
    await expect(store.applyEvents([ok, ev({ imageId: 'boom' })], 1)).rejects.toThrow('boom');
    expect(await store.projects()).toEqual([]);
    // Nothing of the failed batch was recorded as processed, so its redelivery is applied.
    expect((await store.applyEvents([ok], 2)).outcomes).toEqual(['applied']);
    await store.close();
  });

  it('is what STORE_URL=sqlite://PATH opens, creating the folder', async () => {
    const store = await openStore(`sqlite://${join(dir, 'nested', 'deeper', 'x.db')}`);
    expect(store.description).toBe(`sqlite://${join(dir, 'nested', 'deeper', 'x.db')}`);
    await store.close();
  });

  it('refuses a file from a newer enforcer instead of corrupting it', async () => {
    const path = freshPath();
    const db = new Database(path);
    db.pragma('user_version = 99');
    db.close();
    expect(() => SqliteStore.open(path)).toThrow(/schema version 99.*upgrade the enforcer/);
  });
});
