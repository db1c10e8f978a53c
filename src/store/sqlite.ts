import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { ConfigError, StoreUnavailableError } from '../errors.js';
import { applyEventsTo, type ApplyResult, type LedgerTransaction, type MessageKey } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import { ZERO_TOTALS, usageFromTotals, type UsageTotals } from '../ledger/usage.js';
import type { ImageEvent } from '../notification/parse.js';
import type { Usage } from '../quota/resources.js';
import { judgeAdmission, type AdmissionBounds } from '../quota/admission.js';
import type { ActionKind, ActionRecord, ApplyOptions, CreateReservation, LedgerStore } from './port.js';
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
 * (ApplyOptions.listedBy), else the mark the record had.
 */
const putImages = (db: Database.Database, most: number) =>
  new StatementsByRows(
    (rows) =>
      db.prepare(
        `INSERT INTO images (image_id, project_id, status, size, created_at, updated_at, ts, message_id, importing, protected, deleted, listed_pass)
       VALUES ${valuesOf(rows, 12)}
       ON CONFLICT (image_id) DO UPDATE SET project_id = excluded.project_id, status = excluded.status, size = excluded.size,
         created_at = excluded.created_at, updated_at = excluded.updated_at, ts = excluded.ts, message_id = excluded.message_id,
         importing = excluded.importing, protected = excluded.protected, deleted = excluded.deleted,
         listed_pass = coalesce(excluded.listed_pass, images.listed_pass)`,
      ),
    most,
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
      unmarkedLive: db
        .prepare<[string, string, number], ImageRow>(
          `SELECT ${IMAGE_COLUMNS} FROM images WHERE image_id > ? AND ${LIVE} AND listed_pass IS NOT ? ORDER BY image_id LIMIT ?`,
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
    const pushImage = (params: unknown[], r: ImageRecord) =>
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
    // Keyset on the primary key: each page starts in its index where the last one ended.
    const records = this.stmt.unmarkedLive.all(cursor, passId, limit).map((r) => fromRow(r));
    return { records, cursor: records.length < limit ? '' : records.at(-1)!.imageId };
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
