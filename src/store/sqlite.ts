import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { ConfigError, StoreUnavailableError } from '../errors.js';
import { applyEventsTo, type ApplyResult, type LedgerTransaction, type MessageKey } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import { changedSinceListing } from '../ledger/repair.js';
import { ZERO_TOTALS, usageFromTotals, type UsageTotals } from '../ledger/usage.js';
import type { ImageEvent } from '../notification/parse.js';
import type { Usage } from '../quota/resources.js';
import { judgeAdmission, type AdmissionBounds } from '../quota/admission.js';
import type { ActionKind, ActionRecord, ApplyOptions, BulkListing, CreateReservation, LedgerStore } from './port.js';
import { assertStorable, totalsOverflow } from './storable.js';

/** `isLive` (src/ledger/usage.ts) in SQL; forgetDeadImages is its negation. */
const LIVE = `deleted = 0 AND status NOT IN ('killed', 'pending_delete', 'deleted')`;

/** Schema changes, applied in order at open; `PRAGMA user_version` records how far a file is. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE images (
     image_id   TEXT PRIMARY KEY,
     project_id TEXT NOT NULL,
     status     TEXT NOT NULL,
     size       INTEGER,
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     ts         INTEGER NOT NULL,
     message_id TEXT NOT NULL,
     importing  TEXT NOT NULL,
     protected  INTEGER NOT NULL,
     deleted    INTEGER NOT NULL
   );
   CREATE INDEX images_by_project ON images (project_id);
   CREATE TABLE project_totals (
     project_id  TEXT PRIMARY KEY,
     count       INTEGER NOT NULL,
     uploading   INTEGER NOT NULL,
     size_bytes  INTEGER NOT NULL,
     stage_bytes INTEGER NOT NULL
   );
   CREATE TABLE processed_messages (
     message_id TEXT PRIMARY KEY,
     seen_at    INTEGER NOT NULL
   );
   CREATE INDEX processed_by_time ON processed_messages (seen_at);`,
  `CREATE TABLE actions (
     id         INTEGER PRIMARY KEY AUTOINCREMENT,
     at_ms      INTEGER NOT NULL,
     project_id TEXT NOT NULL,
     image_id   TEXT NOT NULL,
     action     TEXT NOT NULL,
     reason     TEXT NOT NULL,
     detail     TEXT NOT NULL
   );
   CREATE INDEX actions_by_time ON actions (at_ms);
   CREATE INDEX actions_by_project ON actions (project_id, at_ms);
   CREATE UNIQUE INDEX actions_would_delete_once ON actions (image_id) WHERE action = 'would-delete';`,
  `CREATE TABLE enforcer_state (
     key   TEXT PRIMARY KEY,
     value TEXT NOT NULL
   );`,
  // The count rule's read: a project's live queued images, newest first, without a scan.
  `CREATE INDEX images_removable ON images (project_id, created_at DESC, image_id DESC) WHERE status = 'queued' AND deleted = 0;`,
  // Dedupe keyed by "<oslo timestamp> <message id>", which a redelivery repeats byte for byte:
  // with the timestamp first a batch's inserts are appends to the right edge of the B-tree, where
  // random uuid4 ids alone would dirty a page each; lookups still find redeliveries of any age.
  // One text column, so that a batch's keys travel as one JSON array of strings (bench/README.md,
  // "Why the code is as it is"). processed_messages keeps the ids an older file holds, is read
  // only while it holds any, and no longer grows.
  `CREATE TABLE processed (
     key     TEXT PRIMARY KEY,
     seen_at INTEGER NOT NULL
   ) WITHOUT ROWID;
   CREATE INDEX processed_by_seen ON processed (seen_at);`,
  // The admission endpoint's reservations: creates admitted whose image.create has not come yet.
  `CREATE TABLE admission_reservations (
     id         INTEGER PRIMARY KEY,
     project_id TEXT NOT NULL,
     expires_at INTEGER NOT NULL
   );
   CREATE INDEX admission_reservations_by_project ON admission_reservations (project_id, expires_at);
   CREATE INDEX admission_reservations_by_expiry ON admission_reservations (expires_at);`,
  // Issue 22. The rate rule's window, read by creation time instead of the project's history;
  // and reconcile's mark, the last pass that listed the image: the upsert of applyEvents keeps it
  // through merges and overwrites, unless the batch carries a pass's mark (listedBy). No index holds the mark: the sweep walks the
  // primary key and reads each row, which costs less per pass than keeping an index in step with
  // a mark on every listed image (bench/README.md, "Why the code is as it is").
  `CREATE INDEX images_by_creation ON images (project_id, created_at);
   ALTER TABLE images ADD COLUMN listed_pass TEXT;`,
  // Leases (acquireLease): one row per name, taken over once expired; a row left by a holder that
  // stopped is at most one row per project ever decided, replaced rather than piled up.
  `CREATE TABLE leases (
     name     TEXT PRIMARY KEY,
     holder   TEXT NOT NULL,
     until_ms INTEGER NOT NULL
   ) WITHOUT ROWID;`,
  // images_by_creation (project_id, created_at) serves every read by project that images_by_project
  // served: the narrower index only cost each insert and update of an image a fifth B-tree (a
  // first reconcile pass writes every image of the cloud).
  `DROP INDEX images_by_project;`,
  // A rowid table whose id index is a unique index of its own, so that a first reconcile pass can
  // append its listing to a table without indexes and build them once, sorted (BulkListing:
  // `CREATE INDEX` sorts, where a scattered uuid4 id made every insert a random one in each B-tree).
  // A PRIMARY KEY's index cannot be dropped nor built later; a unique index serves the same lookups
  // and ON CONFLICT (image_id).
  `CREATE TABLE images_v10 (
     image_id    TEXT NOT NULL,
     project_id  TEXT NOT NULL,
     status      TEXT NOT NULL,
     size        INTEGER,
     created_at  INTEGER NOT NULL,
     updated_at  INTEGER NOT NULL,
     ts          INTEGER NOT NULL,
     message_id  TEXT NOT NULL,
     importing   TEXT NOT NULL,
     protected   INTEGER NOT NULL,
     deleted     INTEGER NOT NULL,
     listed_pass TEXT
   );
   INSERT INTO images_v10 SELECT image_id, project_id, status, size, created_at, updated_at, ts, message_id, importing, protected, deleted, listed_pass
     FROM images ORDER BY image_id;
   DROP TABLE images;
   ALTER TABLE images_v10 RENAME TO images;
   CREATE UNIQUE INDEX images_by_id ON images (image_id);
   CREATE INDEX images_by_creation ON images (project_id, created_at);
   CREATE INDEX images_removable ON images (project_id, created_at DESC, image_id DESC) WHERE status = 'queued' AND deleted = 0;`,
];

/**
 * Rows written by one statement of applyEvents, at most: a batch's images new to the ledger, then
 * its projects' totals, go PUT_ROWS to a statement (12 parameters an image, far under SQLite's
 * 32766). One native call and its bindings a row were a third of a reconcile's first pass, which
 * writes every image of the cloud (bench/README.md).
 */
const PUT_ROWS = 64;

/**
 * A statement of `rows` rows, prepared the first time a batch needs that many: at most PUT_ROWS
 * of them, each once for the life of the store.
 */
class StatementsByRows<R = unknown> {
  private readonly prepared = new Map<number, Database.Statement<unknown[], R>>();
  constructor(
    private readonly prepare: (rows: number) => Database.Statement<unknown[], R>,
    private readonly most = PUT_ROWS,
  ) {}

  /** `items` in statements of up to `most` rows, each row's parameters from `push`. */
  *of<T>(items: readonly T[], push: (params: unknown[], item: T) => void): Generator<[Database.Statement<unknown[], R>, unknown[]]> {
    for (let at = 0; at < items.length; at += this.most) {
      const rows = Math.min(this.most, items.length - at);
      const statement = this.prepared.get(rows) ?? this.prepare(rows);
      this.prepared.set(rows, statement);
      const params: unknown[] = [];
      for (let i = at; i < at + rows; i++) push(params, items[i]!);
      yield [statement, params];
    }
  }
}

const valuesOf = (rows: number, columns: number) => Array.from({ length: rows }, () => `(${Array(columns).fill('?').join(', ')})`).join(', ');

/**
 * The upsert of images. listed_pass: a reconcile's mark given with the write
 * (ApplyOptions.listedBy), else the mark the record had. `append`: a plain insert, for a bulk
 * listing's staging table, which has no index for a conflict to be found by.
 */
const putImages = (db: Database.Database, most: number, table = 'images', append = false) =>
  new StatementsByRows(
    (rows) =>
      db.prepare(
        `INSERT INTO ${table} (image_id, project_id, status, size, created_at, updated_at, ts, message_id, importing, protected, deleted, listed_pass)
       VALUES ${valuesOf(rows, 12)}
       ${
         append
           ? ''
           : `ON CONFLICT (image_id) DO UPDATE SET project_id = excluded.project_id, status = excluded.status, size = excluded.size,
         created_at = excluded.created_at, updated_at = excluded.updated_at, ts = excluded.ts, message_id = excluded.message_id,
         importing = excluded.importing, protected = excluded.protected, deleted = excluded.deleted,
         listed_pass = coalesce(excluded.listed_pass, ${table}.listed_pass)`
       }`,
      ),
    most,
  );

/** A record's parameters for putImages, in its column order. */
const imageParams = (listedBy: string | null) => (params: unknown[], r: ImageRecord) =>
  params.push(
    r.imageId,
    r.projectId,
    r.status,
    r.size,
    r.createdAt,
    r.updatedAt,
    r.timestamp,
    r.messageId,
    r.importing,
    r.protected ? 1 : 0,
    r.deleted ? 1 : 0,
    listedBy,
  );

type TotalsRow = [projectId: string, count: number, uploading: number, sizeBytes: number, stageBytes: number];

/**
 * Projects' totals moved by their deltas, RETURNING the new totals (by project id): SQLite turns
 * an integer sum past 2^63 into an inexact REAL without a word, and JS reads integers exactly only
 * up to 2^53, so the batch checks them.
 */
const addTotals = (db: Database.Database) =>
  new StatementsByRows((rows) =>
    db
      .prepare<unknown[], TotalsRow>(
        `INSERT INTO project_totals (project_id, count, uploading, size_bytes, stage_bytes)
         VALUES ${valuesOf(rows, 5)}
         ON CONFLICT (project_id) DO UPDATE SET count = count + excluded.count, uploading = uploading + excluded.uploading,
           size_bytes = size_bytes + excluded.size_bytes, stage_bytes = stage_bytes + excluded.stage_bytes
         RETURNING project_id, count, uploading, size_bytes, stage_bytes`,
      )
      .raw(),
  );

interface ActionRow {
  at_ms: number;
  project_id: string;
  image_id: string;
  action: ActionKind;
  reason: string;
  detail: string;
}

/**
 * The checkpointer: a thread with a connection of its own that copies the WAL into the database
 * file (`wal_checkpoint(PASSIVE)`: it never blocks the writer) whenever the store says it wrote.
 * Done by the writer itself, a checkpoint stopped the event loop for 50-60 ms every few dozen
 * batches (two fsyncs and the copy), with every delivery waiting behind it. CommonJS, run with
 * `eval`, so that it needs no file of its own in the build.
 */
const CHECKPOINTER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.module);
const db = new Database(workerData.path);
db.pragma('busy_timeout = 5000');
parentPort.on('message', (m) => {
  if (m === 'close') {
    db.close();
    parentPort.close();
    return;
  }
  db.pragma('wal_checkpoint(PASSIVE)');
});
`;

/** The least time between two checkpoints the store asks for. */
const CHECKPOINT_EVERY_MS = 50;

/** The columns of `images` in the order ImageRow has them. */
const IMAGE_COLUMNS = 'image_id, project_id, status, size, created_at, updated_at, ts, message_id, importing, protected, deleted';

/**
 * A row of `images` as an array (better-sqlite3's raw mode): evaluating a busy project reads
 * thousands of rows, and a keyed row object per row cost 1.7x as much (4.4 against 2.5 µs a row).
 */
type ImageRow = [
  imageId: string,
  projectId: string,
  status: string,
  size: number | null,
  createdAt: number,
  updatedAt: number,
  timestamp: number,
  messageId: string,
  importing: string,
  isProtected: number,
  deleted: number,
];

/** An ImageRow followed by the position of its image id in the batch's JSON array. */
type KeyedImageRow = [...ImageRow, key: number];

/**
 * A message's dedupe key: "<oslo timestamp in µs> <message id>". The timestamp is digits only, so
 * the first space ends it; leading, it orders the keys by time (16 digits from 2001 to 2286).
 */
function messageKey(m: MessageKey): string {
  return `${m.timestamp} ${m.messageId}`;
}

function fromRow(r: ImageRow | KeyedImageRow, imageId: string = r[0]): ImageRecord {
  return {
    imageId,
    projectId: r[1],
    status: r[2],
    size: r[3],
    createdAt: r[4],
    updatedAt: r[5],
    timestamp: r[6],
    messageId: r[7],
    importing: r[8],
    protected: r[9] === 1,
    deleted: r[10] === 1,
  };
}

/**
 * The embedded default: one file, one process. Each batch is one transaction (WAL, so a reader
 * such as `status` never blocks the consumer).
 *
 * @example
 *   const store = SqliteStore.open('./data/glance-quota.db');
 */
export class SqliteStore implements LedgerStore {
  readonly description: string;
  readonly bulkListing: BulkListing;
  private readonly db: Database.Database;
  private readonly stmt;
  private readonly applyBatch: Database.Transaction<
    (events: readonly ImageEvent[], nowMs: number, dedupe: boolean, overwrite: boolean, listedBy: string | null) => ApplyResult
  >;
  /** A file's checkpointer, started by the first write; undefined for ':memory:' or after it failed. */
  private checkpointer: Worker | undefined;
  private checkpointerFailed: boolean;
  private lastCheckpointMs = 0;
  /** Whether processed_messages (the dedupe of schemas 1-4) still holds ids to look up. */
  private legacyDedupeHoldsIds: boolean;
  private readonly reserveInTransaction: Database.Transaction<
    (projectId: string, bounds: AdmissionBounds, nowMs: number, expiresAtMs: number) => CreateReservation
  >;
  private readonly releaseInTransaction: Database.Transaction<(creates: ReadonlyMap<string, number>, nowMs: number) => number>;
  private readonly anyReservation: () => boolean;

  private constructor(
    db: Database.Database,
    private readonly path: string,
  ) {
    this.db = db;
    this.checkpointerFailed = path === ':memory:';
    this.description = `sqlite://${path}`;
    this.bulkListing = new SqliteBulkListing(db, () => this.wrote());
    // A batch is read and written set-wise: its ids go in as one JSON array (json_each) per
    // statement, not one native call per event. The reads answer with each id's position in that
    // array (json_each's `key`), never with the id as read back: a string that is not well-formed
    // UTF-16 (a lone surrogate, which JSON allows) is stored as bytes that do not decode to it again.
    this.stmt = {
      // A batch's messages as one JSON array of keys (messageKey).
      seenOf: db.prepare<[string], number>('SELECT j.key FROM json_each(?) AS j JOIN processed AS m ON m.key = j.value').pluck(),
      markSeen: db.prepare<[number, string]>('INSERT INTO processed (key, seen_at) SELECT value, ? FROM json_each(?)'),
      // Ids a file recorded before schema 5, as one JSON array of message ids.
      seenInLegacyDedupe: db.prepare<[string], number>('SELECT j.key FROM json_each(?) AS j JOIN processed_messages AS m ON m.message_id = j.value').pluck(),
      legacyDedupeHoldsAny: db.prepare<[], number>('SELECT EXISTS (SELECT 1 FROM processed_messages)').pluck(),
      imagesOf: db.prepare<[string], KeyedImageRow>(`SELECT ${IMAGE_COLUMNS}, j.key FROM json_each(?) AS j JOIN images ON images.image_id = j.value`).raw(),
      put: putImages(db, PUT_ROWS),
      update: putImages(db, 1),
      addTotals: addTotals(db),
      totals: db.prepare<[string], { count: number; uploading: number; size_bytes: number; stage_bytes: number }>(
        'SELECT count, uploading, size_bytes, stage_bytes FROM project_totals WHERE project_id = ?',
      ),
      totalsOf: db.prepare<[string], { project_id: string; count: number; uploading: number; size_bytes: number; stage_bytes: number }>(
        'SELECT project_id, count, uploading, size_bytes, stage_bytes FROM project_totals WHERE project_id IN (SELECT value FROM json_each(?))',
      ),
      // In the order of images_by_creation (created_at, then rowid), so no sort: ORDER BY image_id
      // sorted every read in a temporary B-tree. No caller needs an order (decide sorts what it
      // uses; the port promises none).
      images: db.prepare<[string], ImageRow>(`SELECT ${IMAGE_COLUMNS} FROM images WHERE project_id = ?`).raw(),
      removable: db
        .prepare<[string, number], ImageRow>(
          `SELECT ${IMAGE_COLUMNS} FROM images WHERE project_id = ? AND status = 'queued' AND deleted = 0 ORDER BY created_at DESC, image_id DESC LIMIT ?`,
        )
        .raw(),
      createdSince: db.prepare<[string, number], ImageRow>(`SELECT ${IMAGE_COLUMNS} FROM images WHERE project_id = ? AND created_at >= ?`).raw(),
      projects: db.prepare<[], string>('SELECT project_id FROM project_totals WHERE count > 0').pluck(),
      projectsAfter: db
        .prepare<[string, number], string>('SELECT project_id FROM project_totals WHERE project_id > ? AND count > 0 ORDER BY project_id LIMIT ?')
        .pluck(),
      // A batch of ids as one JSON array, as applyEvents reads and writes them.
      markListed: db
        .prepare<[string, string], ImageRow>(`UPDATE images SET listed_pass = ? WHERE image_id IN (SELECT value FROM json_each(?)) RETURNING ${IMAGE_COLUMNS}`)
        .raw(),
      // In the table's own order (rowid): one sequential read of the table, where the id's order
      // read each row at a random place (1.4 s of a 400k pass's sweep against 0.2; bench/README.md).
      unmarkedLive: db
        .prepare<[number, string, number], [...ImageRow, number]>(
          `SELECT ${IMAGE_COLUMNS}, rowid FROM images WHERE rowid > ? AND ${LIVE} AND listed_pass IS NOT ? ORDER BY rowid LIMIT ?`,
        )
        .raw(),
      forgetDeadImages: db.prepare<[number]>(
        `DELETE FROM images WHERE (deleted = 1 OR status IN ('killed', 'pending_delete', 'deleted')) AND updated_at * 1000 < ?`,
      ),
      forgetEmptyTotals: db.prepare('DELETE FROM project_totals WHERE count = 0 AND uploading = 0 AND size_bytes = 0 AND stage_bytes = 0'),
      forget: db.prepare('DELETE FROM processed WHERE seen_at < ?'),
      forgetFromLegacyDedupe: db.prepare('DELETE FROM processed_messages WHERE seen_at < ?'),
      recordAction: db.prepare(`INSERT OR IGNORE INTO actions (at_ms, project_id, image_id, action, reason, detail) VALUES (?, ?, ?, ?, ?, ?)`),
      actions: db.prepare<[string | null, string | null, number], ActionRow>(
        'SELECT * FROM actions WHERE (? IS NULL OR project_id = ?) AND at_ms >= ? ORDER BY id',
      ),
      forgetActions: db.prepare('DELETE FROM actions WHERE at_ms < ?'),
      getState: db.prepare<[string], string>('SELECT value FROM enforcer_state WHERE key = ?').pluck(),
      setState: db.prepare<[string, string]>('INSERT INTO enforcer_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
    };
    this.legacyDedupeHoldsIds = this.stmt.legacyDedupeHoldsAny.get() === 1;
    this.applyBatch = db.transaction((events: readonly ImageEvent[], nowMs: number, dedupe: boolean, overwrite: boolean, listedBy: string | null) =>
      this.applyInTransaction(events, nowMs, dedupe, overwrite, listedBy),
    );
    const reservation = {
      forgetExpired: db.prepare<[string, number]>('DELETE FROM admission_reservations WHERE project_id = ? AND expires_at <= ?'),
      forgetAllExpired: db.prepare<[number]>('DELETE FROM admission_reservations WHERE expires_at <= ?'),
      open: db.prepare<[string], number>('SELECT count(*) FROM admission_reservations WHERE project_id = ?').pluck(),
      count: db.prepare<[string], number>('SELECT count FROM project_totals WHERE project_id = ?').pluck(),
      add: db.prepare<[string, number]>('INSERT INTO admission_reservations (project_id, expires_at) VALUES (?, ?)'),
      any: db.prepare<[], number>('SELECT EXISTS (SELECT 1 FROM admission_reservations)').pluck(),
      end: db.prepare<[string, number]>(
        'DELETE FROM admission_reservations WHERE id IN (SELECT id FROM admission_reservations WHERE project_id = ? ORDER BY expires_at, id LIMIT ?)',
      ),
    };
    this.reserveInTransaction = db.transaction((projectId: string, bounds: AdmissionBounds, nowMs: number, expiresAtMs: number) => {
      reservation.forgetExpired.run(projectId, nowMs);
      const reserved = reservation.open.get(projectId) ?? 0;
      const count = reservation.count.get(projectId) ?? 0;
      const admitted = judgeAdmission(count, reserved, bounds).admit;
      if (admitted) reservation.add.run(projectId, expiresAtMs);
      return { admitted, count, reserved };
    });
    this.anyReservation = () => reservation.any.get() === 1;
    this.releaseInTransaction = db.transaction((creates: ReadonlyMap<string, number>, nowMs: number) => {
      reservation.forgetAllExpired.run(nowMs);
      let ended = 0;
      for (const [projectId, n] of creates) if (n > 0) ended += reservation.end.run(projectId, n).changes;
      return ended;
    });
  }

  /** Opens (creating the file and its folder if needed) and migrates. ':memory:' works too. */
  static open(path: string): SqliteStore {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    let db: Database.Database;
    try {
      db = new Database(path);
    } catch (err) {
      throw new StoreUnavailableError(`STORE_URL: cannot open SQLite file '${path}' (${(err as Error).message}); check the path and its permissions`, {
        cause: err,
      });
    }
    db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode: a commit survives a process crash; only an OS crash can lose the last ones,
    // which the broker then redelivers because they were not yet acked.
    db.pragma('synchronous = NORMAL');
    // Then the only fsyncs are at checkpoints, which the default bound (1000 pages) would take
    // about once per batch. A file's checkpoints are taken by the checkpointer thread
    // (CHECKPOINTER), well before 10000 pages (a WAL of up to ~40 MiB, reused); this bound stays
    // should that thread fall behind or fail (bench/README.md, "Why the code is as it is").
    db.pragma('wal_autocheckpoint = 10000');
    db.pragma('busy_timeout = 5000');
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      db.close();
      throw new ConfigError(`STORE_URL: '${path}' has schema version ${version}, newer than this enforcer knows (${MIGRATIONS.length}); upgrade the enforcer`);
    }
    db.transaction(() => {
      for (let v = version; v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${MIGRATIONS.length}`);
    }).immediate();
    return new SqliteStore(db, path);
  }

  async applyEvents(events: readonly ImageEvent[], nowMs: number, options: ApplyOptions = {}): Promise<ApplyResult> {
    if (events.length === 0) return { outcomes: [], projects: [] };
    assertStorable(events);
    const overwrite = options.overwrite ?? false;
    const result = this.applyBatch.immediate(events, nowMs, !overwrite && (options.dedupe ?? true), overwrite, options.listedBy ?? null);
    this.wrote();
    return result;
  }

  /** After a commit: ask the checkpointer for a checkpoint, at most every CHECKPOINT_EVERY_MS. */
  private wrote(): void {
    if (this.checkpointerFailed) return;
    const now = Date.now();
    if (now - this.lastCheckpointMs < CHECKPOINT_EVERY_MS) return;
    this.lastCheckpointMs = now;
    if (!this.checkpointer) {
      try {
        const worker = new Worker(CHECKPOINTER, {
          eval: true,
          workerData: { module: createRequire(import.meta.url).resolve('better-sqlite3'), path: this.path },
        });
        // It must not keep a process alive that forgot to close the store.
        worker.unref();
        // The thread is gone; without it, the writer checkpoints as before (wal_autocheckpoint).
        worker.on('error', () => {
          if (this.checkpointer === worker) this.checkpointer = undefined;
          this.checkpointerFailed = true;
        });
        this.checkpointer = worker;
      } catch {
        this.checkpointerFailed = true;
        return;
      }
    }
    this.checkpointer.postMessage('checkpoint');
  }

  /** Lets the checkpointer finish the checkpoint in hand, close its connection and exit. */
  private async stopCheckpointer(): Promise<void> {
    const worker = this.checkpointer;
    this.checkpointer = undefined;
    if (!worker) return;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    // Waited for: it must keep the process alive until then.
    worker.ref();
    worker.postMessage('close');
    await exited;
  }

  /**
   * One batch, inside its transaction: read what it needs in two statements (the message ids
   * already processed, the records of the images it touches), run the shared rules on that view,
   * then write each changed image once and the new message ids in one statement. Per-event
   * statements made four native calls per event, half of SQLite's ingest time (bench/README.md).
   */
  private applyInTransaction(events: readonly ImageEvent[], nowMs: number, dedupe: boolean, overwrite: boolean, listedBy: string | null): ApplyResult {
    const seen = new Set<string>();
    if (dedupe) {
      const keys = events.map(messageKey);
      for (const at of this.stmt.seenOf.all(JSON.stringify(keys))) seen.add(keys[at]!);
      if (this.legacyDedupeHoldsIds) {
        for (const at of this.stmt.seenInLegacyDedupe.all(JSON.stringify(events.map((e) => e.messageId)))) seen.add(keys[at]!);
      }
    }
    const records = new Map<string, ImageRecord>();
    const imageIds = [...new Set(events.map((e) => e.imageId))];
    for (const row of this.stmt.imagesOf.all(JSON.stringify(imageIds))) {
      const imageId = imageIds[row[11]]!;
      records.set(imageId, fromRow(row, imageId));
    }
    const held = new Set(records.keys());
    // Staged as in MemoryStore: the tables are written once the rules have run on the whole batch.
    const newlySeen = new Map<number, string[]>();
    const changed = new Map<string, ImageRecord>();
    const tx: LedgerTransaction = {
      seen: (m) => seen.has(messageKey(m)),
      markSeen: (m, at) => {
        const key = messageKey(m);
        seen.add(key);
        const keys = newlySeen.get(at);
        if (keys) keys.push(key);
        else newlySeen.set(at, [key]);
      },
      get: (id) => records.get(id),
      put: (r) => {
        records.set(r.imageId, r);
        changed.set(r.imageId, r);
      },
    };
    const { deltas, ...result } = applyEventsTo(tx, events, nowMs, dedupe, overwrite);
    for (const [at, keys] of newlySeen) this.stmt.markSeen.run(at, JSON.stringify(keys));
    // Images new to the ledger go many to a statement (a reconcile's first pass writes every image
    // of the cloud); held ones one at a time, as before: consume's batches, mostly updates, took
    // about 10% longer in the store with every image many to a statement (bench/README.md).
    const fresh: ImageRecord[] = [];
    const updated: ImageRecord[] = [];
    for (const r of changed.values()) (held.has(r.imageId) ? updated : fresh).push(r);
    const pushImage = imageParams(listedBy);
    for (const [statement, params] of this.stmt.put.of(fresh, pushImage)) statement.run(params);
    for (const [statement, params] of this.stmt.update.of(updated, pushImage)) statement.run(params);
    const totals = new Map<string, UsageTotals>();
    for (const [statement, params] of this.stmt.addTotals.of([...deltas], (params, [p, d]) =>
      params.push(p, d.count, d.uploading, d.sizeBytes, d.stageBytes),
    )) {
      for (const [p, ...t] of statement.all(params)) {
        // Thrown inside the transaction, so the whole batch rolls back.
        for (const v of t) if (!Number.isSafeInteger(v)) throw totalsOverflow(p, v);
        totals.set(p, { count: t[0], uploading: t[1], sizeBytes: t[2], stageBytes: t[3] });
      }
    }
    return { ...result, totals };
  }

  async usage(projectId: string): Promise<Usage> {
    const t = this.stmt.totals.get(projectId);
    return usageFromTotals(t ? { count: t.count, uploading: t.uploading, sizeBytes: t.size_bytes, stageBytes: t.stage_bytes } : ZERO_TOTALS);
  }

  async usages(projectIds: readonly string[]): Promise<Map<string, Usage>> {
    const out = new Map<string, Usage>(projectIds.map((p) => [p, usageFromTotals(ZERO_TOTALS)]));
    if (projectIds.length === 0) return out;
    for (const t of this.stmt.totalsOf.all(JSON.stringify(projectIds)))
      out.set(t.project_id, usageFromTotals({ count: t.count, uploading: t.uploading, sizeBytes: t.size_bytes, stageBytes: t.stage_bytes }));
    return out;
  }

  async images(projectId: string): Promise<ImageRecord[]> {
    return this.stmt.images.all(projectId).map((r) => fromRow(r));
  }

  async removableImages(projectId: string, limit: number): Promise<ImageRecord[]> {
    return this.stmt.removable.all(projectId, limit).map((r) => fromRow(r));
  }

  async imagesCreatedSince(projectId: string, sinceSeconds: number): Promise<ImageRecord[]> {
    return this.stmt.createdSince.all(projectId, sinceSeconds).map((r) => fromRow(r));
  }

  async projects(page?: { after: string; limit: number }): Promise<string[]> {
    // A page is walked in SQLite's order (the bytes of UTF-8: code points), which is JS's (UTF-16)
    // for every id but those mixing characters past U+FFFF with U+E000-U+FFFF; the walk still
    // meets each project once.
    if (page) return this.stmt.projectsAfter.all(page.after, page.limit);
    // Sorted as JS sorts (UTF-16), not by SQLite's byte order.
    return this.stmt.projects.all().sort();
  }

  async recordsOf(imageIds: readonly string[]): Promise<ImageRecord[]> {
    if (imageIds.length === 0) return [];
    // Each id once, read back by its position in the array (see the constructor).
    const ids = [...new Set(imageIds)];
    return this.stmt.imagesOf.all(JSON.stringify(ids)).map((row) => fromRow(row, ids[row[11]]!));
  }

  async markListed(imageIds: readonly string[], passId: string): Promise<ImageRecord[]> {
    if (imageIds.length === 0) return [];
    const marked = this.stmt.markListed.all(passId, JSON.stringify(imageIds)).map((row) => fromRow(row));
    this.wrote();
    return marked;
  }

  async unmarkedLive(passId: string, cursor: string, limit: number): Promise<{ records: ImageRecord[]; cursor: string }> {
    // Keyset on the rowid, which an update keeps: a record there for the whole walk is met once.
    // A cursor that is no rowid (an image id, as kept by a pass before schema 10) walks again from
    // the start: tombstoned records are not live, so only the time is spent twice.
    const rows = this.stmt.unmarkedLive.all(/^\d{1,15}$/.test(cursor) ? Number(cursor) : 0, passId, limit);
    const records = rows.map((r) => fromRow(r as unknown as ImageRow));
    return { records, cursor: rows.length < limit ? '' : String(rows.at(-1)![11]) };
  }

  async forgetDeadImagesBefore(beforeMs: number): Promise<number> {
    return this.db
      .transaction(() => {
        const n = this.stmt.forgetDeadImages.run(beforeMs).changes;
        this.stmt.forgetEmptyTotals.run();
        return n;
      })
      .immediate();
  }

  async forgetMessagesBefore(beforeMs: number): Promise<number> {
    return this.db
      .transaction(() => {
        const n = this.stmt.forget.run(beforeMs).changes;
        if (!this.legacyDedupeHoldsIds) return n;
        const old = this.stmt.forgetFromLegacyDedupe.run(beforeMs).changes;
        this.legacyDedupeHoldsIds = this.stmt.legacyDedupeHoldsAny.get() === 1;
        return n + old;
      })
      .immediate();
  }

  async recordActions(actions: readonly ActionRecord[]): Promise<ActionRecord[]> {
    return this.db
      .transaction(() =>
        actions.filter((a) => {
          const detail = JSON.stringify({ over: a.over, usage: a.usage, limits: a.limits });
          return this.stmt.recordAction.run(a.atMs, a.projectId, a.imageId, a.action, a.reason, detail).changes === 1;
        }),
      )
      .immediate();
  }

  async actions(query: { projectId?: string; sinceMs?: number } = {}): Promise<ActionRecord[]> {
    const project = query.projectId ?? null;
    return this.stmt.actions.all(project, project, query.sinceMs ?? Number.MIN_SAFE_INTEGER).map((r) => ({
      atMs: r.at_ms,
      projectId: r.project_id,
      imageId: r.image_id,
      action: r.action,
      reason: r.reason,
      ...(JSON.parse(r.detail) as Pick<ActionRecord, 'over' | 'usage' | 'limits'>),
    }));
  }

  async forgetActionsBefore(beforeMs: number): Promise<number> {
    return this.stmt.forgetActions.run(beforeMs).changes;
  }

  async getState(key: string): Promise<string | undefined> {
    return this.stmt.getState.get(key);
  }

  async setState(key: string, value: string): Promise<void> {
    this.stmt.setState.run(key, value);
  }

  async reserveCreate(projectId: string, bounds: AdmissionBounds, nowMs: number, expiresAtMs: number): Promise<CreateReservation> {
    // IMMEDIATE: the write lock first, so that a gate and a consumer on one file serialise here.
    return this.reserveInTransaction.immediate(projectId, bounds, nowMs, expiresAtMs);
  }

  async releaseReservations(creates: ReadonlyMap<string, number>, nowMs: number): Promise<number> {
    // Every batch with a create comes here, gate or not: with no reservation open (no gate, or
    // none in flight) a read answers, and the writer's lock is not taken for nothing.
    if (!this.anyReservation()) return 0;
    return this.releaseInTransaction.immediate(creates, nowMs);
  }

  /** Prepared at the first lease, so that a store that never takes one prepares nothing. */
  private leaseStatements?: {
    acquire: Database.Statement<[{ name: string; holder: string; ttl: number; now: number }]>;
    release: Database.Statement<[string, string]>;
    until: Database.Statement<[string], number>;
  };
  private get leaseStmt() {
    this.leaseStatements ??= {
      until: this.db.prepare<[string], number>('SELECT until_ms FROM leases WHERE name = ?').pluck(),
      // One statement, so atomic: insert, or take over a row that is the holder's own or expired;
      // a row another holder still has is left as it is, and no row changes.
      acquire: this.db.prepare<[{ name: string; holder: string; ttl: number; now: number }]>(
        `INSERT INTO leases (name, holder, until_ms) VALUES (@name, @holder, @ttl + @now)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
         WHERE leases.holder = excluded.holder OR leases.until_ms <= @now`,
      ),
      release: this.db.prepare<[string, string]>('DELETE FROM leases WHERE name = ? AND holder = ?'),
    };
    return this.leaseStatements;
  }

  async acquireLease(name: string, holder: string, ttlMs: number, nowMs: number): Promise<boolean> {
    return this.leaseStmt.acquire.run({ name, holder, ttl: ttlMs, now: nowMs }).changes === 1;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    this.leaseStmt.release.run(name, holder);
  }

  async leaseUntil(name: string): Promise<number | undefined> {
    return this.leaseStmt.until.get(name);
  }

  async close(): Promise<void> {
    this.checkpointerFailed = true;
    await this.stopCheckpointer();
    if (this.db.open) this.db.close();
  }
}

/** A ledger holding fewer records than this, none listed by a pass, has its first pass staged. */
export const BULK_BELOW = 10_000;

/** Records of the ledger the finish reads at a time, to set against what was staged. */
const FINISH_PAGE = 1000;

/**
 * BulkListing for SQLite. The staging table is `images` as its schema has it, under another name
 * and with no index: a page's images are appends. The finish drops the old table's indexes, builds
 * them on the staging table (sorted, once), writes into it what the bus wrote meanwhile, then
 * swaps the tables and recounts the totals: one transaction, so a reader sees the ledger before
 * or after, never between. `images_staged_pages` keeps when each page was listed, by its last row.
 */
class SqliteBulkListing implements BulkListing {
  private statements?: {
    append: StatementsByRows;
    put: StatementsByRows;
    page: Database.Statement<[number]>;
    heldAfter: Database.Statement<[number, number], [...ImageRow, string | null, number]>;
    stagedOf: Database.Statement<[string], [...ImageRow, number, number | null]>;
  };

  constructor(
    private readonly db: Database.Database,
    private readonly wrote: () => void,
  ) {}

  async begin(): Promise<boolean> {
    return this.db
      .transaction(() => {
        this.drop();
        const few = this.db.prepare(`SELECT count(*) FROM (SELECT 1 FROM images LIMIT ${BULK_BELOW})`).pluck().get() as number;
        if (few >= BULK_BELOW) return false;
        if (this.db.prepare('SELECT EXISTS (SELECT 1 FROM images WHERE listed_pass IS NOT NULL)').pluck().get() === 1) return false;
        this.create();
        return true;
      })
      .immediate();
  }

  async stage(events: readonly ImageEvent[], passId: string, listedAtMs: number): Promise<void> {
    if (events.length === 0) return;
    assertStorable(events);
    this.db
      .transaction(() => {
        // A pass resumed on a ledger whose staging went away (a restore) stages again from here;
        // the sweep then finds what the lost pages held and the next pass lists it again.
        if (!this.exists()) this.create();
        const s = this.prepared();
        for (const [statement, params] of s.append.of(events, imageParams(passId))) statement.run(params);
        s.page.run(listedAtMs);
      })
      .immediate();
    this.wrote();
  }

  async finish(passId: string, nowMs: number, skewMs: number): Promise<{ staged: number }> {
    const result = this.db
      .transaction(() => {
        if (!this.exists()) return { staged: 0 };
        const staged = this.db.prepare('SELECT count(*) FROM images_staged').pluck().get() as number;
        const s = this.prepared();
        // The indexes of images as the file's schema has them, moved to the staging table: index
        // names are the file's, so the old table's go first. Built sorted, once each.
        const indexes = this.db
          .prepare<[], { name: string; sql: string }>("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'images' AND sql IS NOT NULL")
          .all();
        const build = () => {
          for (const { name, sql } of indexes) {
            const moved = sql.replace(/ ON\s+("images"|images)\s*\(/i, ' ON images_staged (');
            if (moved === sql) throw new Error(`SQLite ledger: cannot move index ${name} to the staging table (${sql.slice(0, 120)})`);
            this.db.exec(`DROP INDEX IF EXISTS "${name}"; ${moved}`);
          }
        };
        try {
          build();
        } catch (err) {
          if ((err as { code?: string }).code !== 'SQLITE_CONSTRAINT_UNIQUE') throw err;
          // A page staged twice (a run stopped between its staging and saving its place): the
          // copies are the same listing's, the later one is kept.
          this.db.exec('DELETE FROM images_staged WHERE rowid NOT IN (SELECT max(rowid) FROM images_staged GROUP BY image_id)');
          build();
        }
        // What the bus wrote while the pass listed: the rules of repairListed, record by record.
        for (let after = 0; ; ) {
          const held = s.heldAfter.all(after, FINISH_PAGE);
          if (held.length === 0) break;
          after = held.at(-1)![12];
          const ids = held.map((r) => r[0]);
          const listedAt = new Map<string, number | null>();
          for (const row of s.stagedOf.all(JSON.stringify(ids))) listedAt.set(ids[row[11]]!, row[12]);
          const rows: unknown[][] = [];
          for (const row of held) {
            const columns = row.slice(0, 11);
            // Not listed (so far): kept as it is, its own mark included, for the sweep to judge.
            if (!listedAt.has(row[0])) rows.push([...columns, row[11]]);
            // Listed, but the bus changed it after its page was listed: the bus's state, marked.
            else if (changedSinceListing(fromRow(row as unknown as ImageRow), { listedAtMs: listedAt.get(row[0]) ?? nowMs, nowMs, skewMs }))
              rows.push([...columns, passId]);
            // Else the listing's state, staged, stands.
          }
          for (const [statement, params] of s.put.of(rows, (params, row) => params.push(...row))) statement.run(params);
        }
        this.db.exec('DROP TABLE images; ALTER TABLE images_staged RENAME TO images; DROP TABLE images_staged_pages;');
        this.statements = undefined;
        recountTotals(this.db);
        return { staged };
      })
      .immediate();
    this.wrote();
    return result;
  }

  private exists(): boolean {
    return this.db.prepare("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'images_staged')").pluck().get() === 1;
  }

  /** `images` as the file's schema has it (whatever migrations made it), under the staging name. */
  private create(): void {
    const sql = this.db.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'images'").pluck().get() as string;
    const staged = sql.replace(/^CREATE TABLE\s+("images"|images)/i, 'CREATE TABLE images_staged');
    if (staged === sql) throw new Error(`SQLite ledger: cannot read the schema of table images to stage a listing (${sql.slice(0, 80)})`);
    this.db.exec(`${staged}; CREATE TABLE images_staged_pages (last_row INTEGER PRIMARY KEY, listed_at_ms INTEGER NOT NULL);`);
  }

  private drop(): void {
    this.db.exec('DROP TABLE IF EXISTS images_staged; DROP TABLE IF EXISTS images_staged_pages;');
    this.statements = undefined;
  }

  /** Prepared once the staging table exists, and again after a finish or a begin dropped it. */
  private prepared() {
    this.statements ??= {
      append: putImages(this.db, PUT_ROWS, 'images_staged', true),
      put: putImages(this.db, PUT_ROWS, 'images_staged'),
      page: this.db.prepare<[number]>('INSERT OR REPLACE INTO images_staged_pages (last_row, listed_at_ms) SELECT max(rowid), ? FROM images_staged'),
      heldAfter: this.db
        .prepare<[number, number], [...ImageRow, string | null, number]>(
          `SELECT ${IMAGE_COLUMNS}, listed_pass, rowid FROM images WHERE rowid > ? ORDER BY rowid LIMIT ?`,
        )
        .raw(),
      stagedOf: this.db
        .prepare<[string], [...ImageRow, number, number | null]>(
          `SELECT ${IMAGE_COLUMNS}, j.key, (SELECT listed_at_ms FROM images_staged_pages AS p WHERE p.last_row >= s.rowid ORDER BY p.last_row LIMIT 1)
           FROM json_each(?) AS j JOIN images_staged AS s ON s.image_id = j.value`,
        )
        .raw(),
    };
    return this.statements;
  }
}

/**
 * Every project's totals counted again from its records, in one statement: the SQL twin of
 * `contributionOf` (src/ledger/usage.ts), for a ledger whose records were swapped in whole (a
 * bulk listing), where adding each record's contribution would be a random write a record. Sums
 * past 2^53 are refused as applyEvents refuses them.
 */
function recountTotals(db: Database.Database): void {
  db.exec(`DELETE FROM project_totals;
    INSERT INTO project_totals (project_id, count, uploading, size_bytes, stage_bytes)
    SELECT project_id, sum(live), sum(live AND uploading), sum(CASE WHEN live THEN size ELSE 0 END), sum(CASE WHEN live AND staging THEN size ELSE 0 END)
    FROM (SELECT project_id, (${LIVE}) AS live, (status IN ('saving', 'uploading', 'importing') OR importing <> '') AS uploading,
                 (status IN ('uploading', 'importing') OR importing <> '') AS staging, CASE WHEN size > 0 THEN size ELSE 0 END AS size
          FROM images NOT INDEXED)
    GROUP BY project_id ORDER BY project_id;`);
  const past = db
    .prepare<[], { project_id: string; total: number }>(
      `SELECT project_id, max(size_bytes, stage_bytes, count) AS total FROM project_totals WHERE max(size_bytes, stage_bytes, count) > ${Number.MAX_SAFE_INTEGER} LIMIT 1`,
    )
    .get();
  if (past) throw totalsOverflow(past.project_id, past.total);
}
