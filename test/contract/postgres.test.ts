import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { StoreDataError } from '../../src/errors.js';
import { openStore } from '../../src/store/index.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { ev, MiB } from '../support/events.js';
import { freshPostgresDatabase, holdService, type TestDatabase } from '../support/services.js';
import { describeLedgerStore } from './ledger-store.contract.js';
import { describeAdmissionStore, itAdmitsExactlyAcrossGates } from './admission.contract.js';
import { itAppliesConcurrentWritersExactlyOnce, itGrantsOneLeaseAcrossConnections } from './shared-ledger.contract.js';

/**
 * Against a real PostgreSQL (trust auth, user postgres, TEST_POSTGRES_URL): a database of its own
 * for this file, dropped at the end, and a schema of its own (via search_path) for every store a
 * test opens. The file holds the service lock, so the integration suite never stops PostgreSQL
 * under it (test/support/services.ts).
 */
let db: TestDatabase | undefined;
let release: (() => void) | undefined;

// Kept and thrown by every test, so that each one fails (vitest would mark them skipped if
// beforeAll threw).
let unreachable: Error | undefined;
beforeAll(async () => {
  try {
    release = await holdService('postgres');
    db = await freshPostgresDatabase('test');
  } catch (err) {
    unreachable = err as Error;
  }
}, 330_000);
beforeEach(() => {
  if (unreachable) throw unreachable;
});

afterAll(async () => {
  try {
    await db?.drop();
  } finally {
    release?.();
  }
});

/** STORE_URL of a new, empty schema of the test database. */
const freshUrl = () => db!.freshSchemaUrl();

describeLedgerStore('postgres', async () => PostgresStore.open(await freshUrl()));
describeAdmissionStore('postgres', async () => PostgresStore.open(await freshUrl()));

describe('postgres: a database shared by several consumers', () => {
  it('keeps the ledger and the processed ids across a restart', async () => {
    const url = await freshUrl();
    const a = ev({ imageId: 'a', status: 'active', size: 2 * MiB });
    const first = await PostgresStore.open(url);
    await first.applyEvents([a], 1);
    await first.close();
    const again = await PostgresStore.open(url);
    expect((await again.applyEvents([a], 2)).outcomes).toEqual(['duplicate']);
    expect((await again.usage('p1')).image_size_total).toBe(2);
    expect(await again.images('p1')).toEqual([expect.objectContaining({ imageId: 'a', size: 2 * MiB, timestamp: a.timestamp })]);
    await again.close();
  });

  it('commits a batch whole or not at all', async () => {
    const url = await freshUrl();
    const store = await PostgresStore.open(url);
    // A trigger plants a failure on one image, as a full disk or a constraint would.
    const schema = new URL(url).searchParams.get('options')!.split('=')[1]!;
    await db!.admin.query(`CREATE FUNCTION ${schema}.boom() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.image_id = 'boom' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$`);
    await db!.admin.query(`CREATE TRIGGER boom BEFORE INSERT ON ${schema}.images FOR EACH ROW EXECUTE FUNCTION ${schema}.boom()`);
    const ok = ev({ imageId: 'ok', status: 'active', size: MiB });
    await expect(store.applyEvents([ok, ev({ imageId: 'boom' })], 1)).rejects.toThrow('boom');
    expect(await store.projects()).toEqual([]);
    expect(await store.usage('p1')).toMatchObject({ image_count_total: 0 });
    // Nothing of the failed batch was recorded as processed, so its redelivery is applied.
    expect((await store.applyEvents([ok], 2)).outcomes).toEqual(['applied']);
    await store.close();
  });

  it("calls a refusal of the batch's data (SQLSTATE class 22/23) a StoreDataError, not an outage", async () => {
    const url = await freshUrl();
    const store = await PostgresStore.open(url);
    const schema = new URL(url).searchParams.get('options')!.split('=')[1]!;
    // A constraint the adapter does not check itself: only PostgreSQL's own refusal tells.
    await db!.admin.query(`ALTER TABLE ${schema}.images ADD CONSTRAINT short_status CHECK (length(status) < 20)`);
    const err = await store.applyEvents([ev({ imageId: 'a', status: 'x'.repeat(30) })], 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreDataError);
    expect((err as Error).message).toMatch(/SQLSTATE 23514/);
    expect((err as { cause?: { code?: string } }).cause?.code).toBe('23514');
    expect(await store.projects()).toEqual([]);
    // An outage stays an outage: the trigger of the test above, with an ordinary error.
    await db!.admin.query(`CREATE FUNCTION ${schema}.down() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'disk full' USING ERRCODE = '53100'; END $$`);
    await db!.admin.query(`CREATE TRIGGER down BEFORE INSERT ON ${schema}.images FOR EACH ROW EXECUTE FUNCTION ${schema}.down()`);
    const outage = await store.applyEvents([ev({ imageId: 'b' })], 2).catch((e: unknown) => e);
    expect(outage).not.toBeInstanceOf(StoreDataError);
    expect((outage as Error).message).toBe('disk full');
    await store.close();
  });

  it('runs a batch again after a serialization failure, once', async () => {
    const url = await freshUrl();
    const store = await PostgresStore.open(url);
    const schema = new URL(url).searchParams.get('options')!.split('=')[1]!;
    // A sequence is not rolled back, so only the first attempt fails.
    await db!.admin.query(`CREATE SEQUENCE ${schema}.attempts`);
    await db!.admin.query(`CREATE FUNCTION ${schema}.conflict() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF nextval('${schema}.attempts') = 1 THEN RAISE EXCEPTION 'simulated' USING ERRCODE = 'serialization_failure'; END IF; RETURN NEW; END $$`);
    await db!.admin.query(`CREATE TRIGGER conflict BEFORE INSERT ON ${schema}.images FOR EACH ROW EXECUTE FUNCTION ${schema}.conflict()`);
    const a = ev({ imageId: 'a', status: 'active', size: MiB });
    expect((await store.applyEvents([a], 1)).outcomes).toEqual(['applied']);
    expect(await store.usage('p1')).toMatchObject({ image_count_total: 1, image_size_total: 1 });
    expect((await db!.admin.query(`SELECT last_value FROM ${schema}.attempts`)).rows[0].last_value).toBe('2');
    await store.close();
  });

  itAppliesConcurrentWritersExactlyOnce('connection pools', async () => {
    const url = await freshUrl();
    return [await PostgresStore.open(url), await PostgresStore.open(url)];
  });

  itAdmitsExactlyAcrossGates('connection pools', async () => {
    const url = await freshUrl();
    return [await PostgresStore.open(url), await PostgresStore.open(url)];
  });

  itGrantsOneLeaseAcrossConnections('connection pools', async () => {
    const url = await freshUrl();
    return [await PostgresStore.open(url), await PostgresStore.open(url)];
  });

  it('migrates once when two processes open a new database together', async () => {
    const url = await freshUrl();
    const stores = await Promise.all([PostgresStore.open(url), PostgresStore.open(url), PostgresStore.open(url)]);
    const schema = new URL(url).searchParams.get('options')!.split('=')[1]!;
    const { rows } = await db!.admin.query(`SELECT version FROM ${schema}.schema_migrations ORDER BY version`);
    expect(rows).toEqual([{ version: 1 }, { version: 2 }, { version: 3 }, { version: 4 }, { version: 5 }, { version: 6 }]);
    await Promise.all(stores.map((s) => s.close()));
  });

  it("upgrades a database of schema 4: its records get the window's index and the mark", async () => {
    const url = await freshUrl();
    const before = await PostgresStore.open(url);
    await before.applyEvents(
      [
        ev({ imageId: 'old', status: 'active', size: MiB, createdAt: 10 }),
        ev({ imageId: 'new', status: 'queued', createdAt: 200 }),
        ev({ imageId: 'gone', status: 'deleted', deleted: true, createdAt: 300 }),
      ],
      1,
    );
    await before.close();
    // Back to what an enforcer from before issue 22 left.
    const schema = new URL(url).searchParams.get('options')!.split('=')[1]!;
    await db!.admin.query(`DROP INDEX ${schema}.images_by_creation;
                           ALTER TABLE ${schema}.images DROP COLUMN listed_pass; DROP TABLE ${schema}.leases;
                           DELETE FROM ${schema}.schema_migrations WHERE version >= 5`);

    const upgraded = await PostgresStore.open(url);
    expect((await upgraded.imagesCreatedSince('p1', 100)).map((r) => r.imageId).sort()).toEqual(['gone', 'new']);
    expect((await upgraded.unmarkedLive('pass-1', '', 10)).records.map((r) => r.imageId)).toEqual(['new', 'old']);
    await upgraded.markListed(['old'], 'pass-1');
    expect((await upgraded.unmarkedLive('pass-1', '', 10)).records.map((r) => r.imageId)).toEqual(['new']);
    await upgraded.close();
  });

  it('refuses a database from a newer enforcer instead of corrupting it', async () => {
    const url = await freshUrl();
    await (await PostgresStore.open(url)).close();
    const schema = new URL(url).searchParams.get('options')!.split('=')[1]!;
    await db!.admin.query(`INSERT INTO ${schema}.schema_migrations (version) VALUES (99)`);
    await expect(PostgresStore.open(url)).rejects.toThrow(/schema version 99.*upgrade the enforcer/);
  });

  it('is what STORE_URL=postgres:// and postgresql:// open; the password is never shown', async () => {
    for (const scheme of ['postgres', 'postgresql']) {
      const url = new URL(await freshUrl());
      url.protocol = `${scheme}:`;
      if (!url.password) url.password = 's3cret'; // trust auth: accepted and ignored
      const store = await openStore(String(url));
      expect(store.description).toBe(`${scheme}://${url.username}:***@${new URL(db!.url).host}/${db!.name}`);
      expect(store.description).not.toContain(url.password);
      expect((await store.applyEvents([ev({ imageId: 'a' })], 1)).outcomes).toEqual(['applied']);
      await store.close();
    }
    const err = await openStore('postgres://postgres:s3cret@127.0.0.1:1/nowhere').catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/^STORE_URL: cannot connect to PostgreSQL at postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:1\/nowhere/);
    expect((err as Error).message).not.toContain('s3cret');
  });
});
