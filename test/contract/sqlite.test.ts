import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { parseNotification, type ImageEvent } from '../../src/notification/parse.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { openStore } from '../../src/store/index.js';
import { ev, MiB } from '../support/events.js';
import { generateHistory, withDuplicates } from '../support/generate.js';
import { DOOR } from '../support/fixtures.js';
import { describeLedgerStore } from './ledger-store.contract.js';
import { describeAdmissionStore } from './admission.contract.js';
import { itGrantsOneLeaseAcrossConnections } from './shared-ledger.contract.js';

/** The day these tests are judged at: after every captured and generated body. */
const NOW = Date.UTC(2026, 11, 1);

const dir = mkdtempSync(join(tmpdir(), 'gqe-sqlite-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const freshPath = () => join(dir, `ledger-${++n}.db`);

/** Takes a file back to schema version 6, as an enforcer from before issue 22 left it. */
function backToSchema6(db: Database.Database): void {
  // Schema 6's images: the id its PRIMARY KEY (schema 10 made it a unique index of its own).
  db.exec(`CREATE TABLE images6 (image_id TEXT PRIMARY KEY, project_id TEXT NOT NULL, status TEXT NOT NULL, size INTEGER,
             created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, ts INTEGER NOT NULL, message_id TEXT NOT NULL,
             importing TEXT NOT NULL, protected INTEGER NOT NULL, deleted INTEGER NOT NULL);
           INSERT INTO images6 SELECT image_id, project_id, status, size, created_at, updated_at, ts, message_id, importing, protected, deleted FROM images;
           DROP TABLE images;
           ALTER TABLE images6 RENAME TO images;
           CREATE INDEX images_by_project ON images (project_id);
           CREATE INDEX images_removable ON images (project_id, created_at DESC, image_id DESC) WHERE status = 'queued' AND deleted = 0;
           DROP TABLE leases;
           PRAGMA user_version = 6;`);
}

describeLedgerStore('sqlite', async () => SqliteStore.open(freshPath()));
describeAdmissionStore('sqlite', async () => SqliteStore.open(freshPath()));

describe('sqlite: a file on disk', () => {
  // A `consume` and a `gate` (or `reconcile`) may open one file together.
  itGrantsOneLeaseAcrossConnections('connections to one file', async () => {
    const path = freshPath();
    return [SqliteStore.open(path), SqliteStore.open(path)];
  });

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

  it('still knows the message ids a file recorded before dedupe was keyed by timestamp, until retention forgets them', async () => {
    const path = freshPath();
    const a = ev({ imageId: 'a', status: 'active', size: 2 * MiB });
    const store = SqliteStore.open(path);
    await store.applyEvents([a], 1_000);
    await store.close();
    // Back to schema version 4: the id in processed_messages only, no processed table.
    const db = new Database(path);
    backToSchema6(db);
    db.exec(`INSERT INTO processed_messages (message_id, seen_at) SELECT substr(key, instr(key, ' ') + 1), seen_at FROM processed;
             DROP TABLE processed;
             DROP TABLE admission_reservations;
             PRAGMA user_version = 4;`);
    db.close();
    const upgraded = SqliteStore.open(path);
    expect((await upgraded.applyEvents([a], 2_000)).outcomes).toEqual(['duplicate']);
    const b = ev({ imageId: 'b', status: 'active', size: MiB });
    expect((await upgraded.applyEvents([b, b], 3_000)).outcomes).toEqual(['applied', 'duplicate']);
    // One from each table.
    expect(await upgraded.forgetMessagesBefore(10_000)).toBe(2);
    expect((await upgraded.applyEvents([a, b], 11_000)).outcomes).toEqual(['applied', 'applied']);
    expect((await upgraded.usage('p1')).image_size_total).toBe(3);
    await upgraded.close();
  });

  it("upgrades a file of schema 6: its records get the window's index and the mark", async () => {
    const path = freshPath();
    const before = SqliteStore.open(path);
    await before.applyEvents(
      [
        ev({ imageId: 'old', status: 'active', size: MiB, createdAt: 10 }),
        ev({ imageId: 'new', status: 'queued', createdAt: 200 }),
        ev({ imageId: 'gone', status: 'deleted', deleted: true, createdAt: 300 }),
      ],
      1,
    );
    await before.close();
    const db = new Database(path);
    backToSchema6(db);
    db.close();

    const upgraded = SqliteStore.open(path);
    expect((await upgraded.imagesCreatedSince('p1', 100)).map((r) => r.imageId).sort()).toEqual(['gone', 'new']);
    expect((await upgraded.unmarkedLive('pass-1', '', 10)).records.map((r) => r.imageId)).toEqual(['new', 'old']);
    await upgraded.markListed(['old'], 'pass-1');
    expect((await upgraded.unmarkedLive('pass-1', '', 10)).records.map((r) => r.imageId)).toEqual(['new']);
    await upgraded.close();
    // And the planner reads the new index, and walks the sweep by the primary key, not in a sort.
    const check = new Database(path);
    const plan = (sql: string) => (check.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[]).map((r) => r.detail).join('; ');
    expect(plan(`SELECT * FROM images WHERE project_id = 'p1' AND created_at >= 100`)).toContain('images_by_creation');
    // Schema 9: the index on project_id alone is gone; a project's records are read through the window's.
    expect(plan(`SELECT * FROM images WHERE project_id = 'p1'`)).toContain('images_by_creation (project_id=?)');
    expect(check.prepare(`SELECT count(*) AS n FROM sqlite_master WHERE name = 'images_by_project'`).get()).toEqual({ n: 0 });
    const sweep = plan(`SELECT * FROM images WHERE image_id > '' AND listed_pass IS NOT 'x' ORDER BY image_id LIMIT 5`);
    // Schema 10: the id's index is a unique index of its own, which a bulk listing builds sorted.
    expect(sweep).toContain('images_by_id (image_id>?)');
    expect(sweep).not.toContain('TEMP B-TREE');
    check.close();
  });

  it('walks the sweep in the table order, and from the start again on a cursor an older version kept (an image id)', async () => {
    const store = SqliteStore.open(freshPath());
    await store.applyEvents(
      ['b', 'a', 'c'].map((imageId) => ev({ imageId, status: 'queued' })),
      1,
    );
    const walked: string[] = [];
    let cursor = '';
    do {
      const page = await store.unmarkedLive('pass-1', cursor, 1);
      walked.push(...page.records.map((r) => r.imageId));
      cursor = page.cursor;
    } while (cursor !== '' && walked.length < 10);
    expect(walked).toEqual(['b', 'a', 'c']);
    expect((await store.unmarkedLive('pass-1', 'a', 10)).records.map((r) => r.imageId)).toEqual(['b', 'a', 'c']);
    await store.close();
  });

  it('takes a message that reuses a known id with another oslo timestamp as a new one (a redelivery repeats both)', async () => {
    const store = SqliteStore.open(freshPath());
    const a = ev({ imageId: 'a', status: 'queued', updatedAt: 10, timestamp: 10_000_000 });
    const sameIdLater = { ...a, status: 'active', size: MiB, updatedAt: 11, timestamp: 11_000_000 };
    expect((await store.applyEvents([a], 1)).outcomes).toEqual(['applied']);
    expect((await store.applyEvents([a, sameIdLater, sameIdLater], 2)).outcomes).toEqual(['duplicate', 'applied', 'duplicate']);
    expect(await store.usage('p1')).toMatchObject({ image_count_total: 1, image_size_total: 1 });
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

describe('sqlite: a batch is read and written set-wise', () => {
  /** Everything a store can be asked about its ledger, images in id order. */
  async function ledgerOf(store: LedgerStore) {
    const out: Record<string, unknown> = {};
    for (const p of await store.projects()) {
      const images = (await store.images(p)).sort((a, b) => (a.imageId < b.imageId ? -1 : 1));
      out[p] = { usage: await store.usage(p), images };
    }
    return out;
  }

  it('leaves the same ledger as MemoryStore after a generated day in batches, redeliveries included', async () => {
    const { bodies } = generateHistory({ seed: 21, projects: 15, messages: 6_000 });
    const events = withDuplicates(bodies, 0.03, 22)
      .map((b) => parseNotification(b, NOW, DOOR))
      .flatMap((o) => (o.kind === 'image' ? [o.event] : []));
    const sqlite = SqliteStore.open(freshPath());
    const memory = new MemoryStore();
    // Uneven batch sizes, so that an image's events and a message's repeats fall in the same
    // batch as often as across batches.
    for (let i = 0, size = 1; i < events.length; i += size, size = (size * 7) % 997) {
      const batch = events.slice(i, i + size);
      expect(await sqlite.applyEvents(batch, i)).toEqual(await memory.applyEvents(batch, i));
    }
    expect(await ledgerOf(sqlite)).toEqual(await ledgerOf(memory));
    await sqlite.close();
  });

  it('finds message and image ids again whatever characters they hold (they travel as JSON)', async () => {
    const store = SqliteStore.open(freshPath());
    // NUL and lone surrogates are refused by every store (the contract suite); the rest of JSON's
    // special characters must round-trip.
    const odd = ['q"uote', 'back\\slash', 'tab\tand\nnewline', 'ünï😀', '\u001b[31m', ' ', '["a"]'];
    const events: ImageEvent[] = odd.map((id) => ev({ imageId: id, messageId: `m ${id}`, status: 'active', size: MiB }));
    expect((await store.applyEvents(events, 1)).outcomes).toEqual(odd.map(() => 'applied'));
    expect((await store.applyEvents(events, 2)).outcomes).toEqual(odd.map(() => 'duplicate'));
    // The same images again, under new message ids: found and updated, not counted twice.
    const again = odd.map((id) => ev({ imageId: id, status: 'active', size: 2 * MiB, updatedAt: 2_000 }));
    expect((await store.applyEvents(again, 3)).outcomes).toEqual(odd.map(() => 'applied'));
    expect(await store.usage('p1')).toMatchObject({ image_count_total: odd.length, image_size_total: 2 * odd.length });
    // One record each, read back as given.
    expect((await store.images('p1')).map((r) => r.imageId).sort()).toEqual([...odd].sort());
    await store.close();
  });

  it('answers an empty batch with no outcomes', async () => {
    const store = SqliteStore.open(freshPath());
    expect(await store.applyEvents([], 1)).toEqual({ outcomes: [], projects: [] });
    await store.close();
  });
});
