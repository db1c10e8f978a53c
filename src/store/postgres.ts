import pg from 'pg';
import { applyEventsTo, type ApplyResult, type LedgerTransaction } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import { ZERO_TOTALS, usageFromTotals, type UsageTotals } from '../ledger/usage.js';
import type { ImageEvent } from '../notification/parse.js';
import type { Usage } from '../quota/resources.js';
import { judgeAdmission, type AdmissionBounds } from '../quota/admission.js';
import type { ActionKind, ActionRecord, ApplyOptions, CreateReservation, LedgerStore } from './port.js';
import { ConfigError, StoreDataError, StoreUnavailableError } from '../errors.js';
import { assertStorable, totalsOverflow } from './storable.js';
import { redactUrl } from '../redact.js';
import { backoffMs } from '../retry.js';

/** `isLive` (src/ledger/usage.ts) in SQL; forgetDeadImagesBefore says it in the negative. */
const LIVE = `NOT deleted AND status NOT IN ('killed', 'pending_delete', 'deleted')`;

/**
 * Schema changes, applied in order at open; `schema_migrations` records which ones a database has.
 * Identifiers are `COLLATE "C"`: byte order, whatever the database's locale, like the ids' own.
 */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE images (
     image_id   TEXT COLLATE "C" PRIMARY KEY,
     project_id TEXT COLLATE "C" NOT NULL,
     status     TEXT NOT NULL,
     size       BIGINT,
     created_at BIGINT NOT NULL,
     updated_at BIGINT NOT NULL,
     ts         BIGINT NOT NULL,
     message_id TEXT COLLATE "C" NOT NULL,
     importing  TEXT NOT NULL,
     protected  BOOLEAN NOT NULL,
     deleted    BOOLEAN NOT NULL
   );
   CREATE INDEX images_by_project ON images (project_id, image_id);
   CREATE TABLE project_totals (
     project_id  TEXT COLLATE "C" PRIMARY KEY,
     count       BIGINT NOT NULL,
     uploading   BIGINT NOT NULL,
     size_bytes  BIGINT NOT NULL,
     stage_bytes BIGINT NOT NULL
   );
   CREATE TABLE processed_messages (
     message_id TEXT COLLATE "C" PRIMARY KEY,
     seen_at    BIGINT NOT NULL
   );
   CREATE INDEX processed_by_time ON processed_messages (seen_at);
   CREATE TABLE actions (
     id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
     at_ms      BIGINT NOT NULL,
     project_id TEXT COLLATE "C" NOT NULL,
     image_id   TEXT COLLATE "C" NOT NULL,
     action     TEXT NOT NULL,
     reason     TEXT NOT NULL,
     detail     JSONB NOT NULL
   );
   CREATE INDEX actions_by_time ON actions (at_ms);
   CREATE INDEX actions_by_project ON actions (project_id, at_ms);
   CREATE UNIQUE INDEX actions_would_delete_once ON actions (image_id) WHERE action = 'would-delete';`,
  `CREATE TABLE enforcer_state (
     key   TEXT COLLATE "C" PRIMARY KEY,
     value TEXT NOT NULL
   );`,
  // The count rule's read: a project's live queued images, newest first, without a scan.
  `CREATE INDEX images_removable ON images (project_id, created_at DESC, image_id DESC) WHERE status = 'queued' AND NOT deleted;`,
  // The admission endpoint's reservations: creates admitted whose image.create has not come yet.
  `CREATE TABLE admission_reservations (
     id         BIGSERIAL PRIMARY KEY,
     project_id TEXT COLLATE "C" NOT NULL,
     expires_at BIGINT NOT NULL
   );
   CREATE INDEX admission_reservations_by_project ON admission_reservations (project_id, expires_at);
   CREATE INDEX admission_reservations_by_expiry ON admission_reservations (expires_at);`,
  // Issue 22. The rate rule's window, read by creation time instead of the project's history;
  // and reconcile's mark, the last pass that listed the image: the upsert of applyEvents keeps it
  // through merges and overwrites, unless the batch carries a pass's mark (listedBy). No index holds the mark or serves the sweep,
  // which walks the primary key: an index would not be cheaper per pass (bench/README.md, "Why
  // the code is as it is"), and one kept out of the mark's way leaves its updates HOT.
  `CREATE INDEX images_by_creation ON images (project_id, created_at);
   ALTER TABLE images ADD COLUMN listed_pass TEXT COLLATE "C";`,
  // Leases (acquireLease): one row per name, taken over once expired, so a row left by a holder
  // that stopped is replaced rather than piled up.
  `CREATE TABLE leases (
     name     TEXT COLLATE "C" PRIMARY KEY,
     holder   TEXT COLLATE "C" NOT NULL,
     until_ms BIGINT NOT NULL
   );`,
];

/** pg_advisory_xact_lock(bigint) key that serialises migrations: "gqe-mig" in ASCII. */
const MIGRATION_LOCK = '29116601968978279';
/**
 * First key of pg_advisory_xact_lock(int, int) for image locks ("gqe" in ASCII). The two-int
 * form is a key space of its own, apart from the bigint one used for migrations.
 */
const IMAGE_LOCK_CLASS = 0x677165;
/** First key of the per-project admission lock ("gqr"): every gate's reserveCreate for a project queues on it. */
const ADMISSION_LOCK_CLASS = 0x677172;

/** serialization_failure, deadlock_detected: the transaction did nothing and may simply run again. */
const RETRYABLE = new Set(['40001', '40P01']);
const MAX_ATTEMPTS = 5;

interface ImageRow {
  image_id: string;
  project_id: string;
  status: string;
  size: string | null;
  created_at: string;
  updated_at: string;
  ts: string;
  message_id: string;
  importing: string;
  protected: boolean;
  deleted: boolean;
}

interface ActionRow {
  at_ms: string;
  project_id: string;
  image_id: string;
  action: ActionKind;
  reason: string;
  detail: Pick<ActionRecord, 'over' | 'usage' | 'limits'>;
}

/** The columns of `images` that make a record (`SELECT *` would carry the mark along too). */
const IMAGE_COLUMNS = 'image_id, project_id, status, size, created_at, updated_at, ts, message_id, importing, protected, deleted';
/** The same, each named by its table: where a join has an image_id of its own. */
const IMAGES_COLUMNS = IMAGE_COLUMNS.split(', ')
  .map((c) => `images.${c}`)
  .join(', ');

// BIGINT comes back as a string (it may exceed 2^53); every value here was a JS number going in.
function fromRow(r: ImageRow): ImageRecord {
  return {
    imageId: r.image_id,
    projectId: r.project_id,
    status: r.status,
    size: r.size === null ? null : Number(r.size),
    createdAt: Number(r.created_at),
    updatedAt: Number(r.updated_at),
    timestamp: Number(r.ts),
    messageId: r.message_id,
    importing: r.importing,
    protected: r.protected,
    deleted: r.deleted,
  };
}

/** The URL with its password masked and its query (which may carry one, or `sslpassword`) left out. */
function describeUrl(url: string): string {
  return redactUrl(url).replace(/[?#][\s\S]*$/, '');
}

function isRetryable(err: unknown): boolean {
  return RETRYABLE.has(sqlState(err));
}

function sqlState(err: unknown): string {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' ? code : '';
}

/**
 * SQLSTATE classes raised by what a batch holds, not by the server's health: 21 cardinality
 * violation (one ON CONFLICT command given the same key twice), 22 data exception (a NUL byte,
 * bigint out of range), 23 integrity constraint violation. The same batch would fail forever, so
 * it is a StoreDataError, which the pipeline bisects; any other failure is an outage, retried.
 */
function asDataError(err: unknown): unknown {
  const state = sqlState(err);
  if (!/^2[123]/.test(state)) return err;
  return new StoreDataError(`PostgreSQL refused the batch's data (SQLSTATE ${state}: ${(err as Error).message})`, { cause: err });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The ledger in PostgreSQL, shared by any number of consumer processes.
 *
 * Each batch is one READ COMMITTED transaction, exact against concurrent writers because:
 * 1. Dedupe: the batch's message ids are claimed with `INSERT ... ON CONFLICT DO NOTHING
 *    RETURNING`. The unique index makes a second claimer of an id wait for the first one's
 *    transaction: if it commits, the id is not returned (a duplicate); if it rolls back, the
 *    second claimer gets it. So each id is applied by exactly one committed transaction.
 * 2. Each touched image is locked with `pg_advisory_xact_lock` on a hash of its id, in ascending
 *    key order. A row lock (`FOR UPDATE`) cannot lock an image that has no row yet, and two
 *    batches creating the same image would then both merge into "nothing"; the advisory lock
 *    covers present and absent images alike (a hash collision only serialises two images more).
 *    The lock is released after the holder's commit is visible, and every statement of READ
 *    COMMITTED takes a new snapshot, so the rows read after the lock are the latest committed.
 * 3. The records are merged in JS by the shared pure core (`applyEventsTo`), written back, and
 *    each project's totals delta is added with `INSERT ... ON CONFLICT DO UPDATE SET count =
 *    project_totals.count + excluded.count`, an atomic increment on the latest row version. The
 *    deltas were computed from locked, current records, so totals equal a scan of the records.
 * Deadlock freedom: claims come before image locks, which come before totals rows; each group
 * is taken in sorted order. A deadlock or serialization failure would still only roll the
 * transaction back, and it is retried a few times.
 *
 * @example
 *   const store = await PostgresStore.open('postgres://gqe:secret@db.example.com:5432/gqe');
 *   await store.applyEvents(events, Date.now());
 */
export class PostgresStore implements LedgerStore {
  readonly description: string;
  private readonly pool: pg.Pool;

  private constructor(pool: pg.Pool, description: string) {
    this.pool = pool;
    this.description = description;
  }

  /**
   * Connects and migrates. Two processes opening a new database together are serialised by an
   * advisory lock held by the migrating transaction.
   */
  static async open(url: string): Promise<PostgresStore> {
    const description = describeUrl(url);
    const pool = new pg.Pool({ connectionString: url, connectionTimeoutMillis: 10_000 });
    // An idle connection dropped by the server must not crash the process; the pool replaces it.
    pool.on('error', () => {});
    const store = new PostgresStore(pool, description);
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (err) {
      await pool.end();
      throw new StoreUnavailableError(
        `STORE_URL: cannot connect to PostgreSQL at ${description} (${(err as Error).message}); check the host, port, database and credentials`,
        { cause: err },
      );
    }
    const onError = () => {}; // the failing query rejects; see transaction()
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [MIGRATION_LOCK]);
      await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())');
      const { rows } = await client.query<{ version: number | null }>('SELECT max(version) AS version FROM schema_migrations');
      const version = rows[0]?.version ?? 0;
      if (version > MIGRATIONS.length) {
        throw new ConfigError(
          `STORE_URL: ${description} has schema version ${version}, newer than this enforcer knows (${MIGRATIONS.length}); upgrade the enforcer`,
        );
      }
      for (let v = version; v < MIGRATIONS.length; v++) {
        await client.query(MIGRATIONS[v]!);
        await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [v + 1]);
      }
      await client.query('COMMIT');
      client.off('error', onError);
      client.release();
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      client.off('error', onError);
      client.release(true);
      await pool.end();
      throw err;
    }
    return store;
  }

  /** Runs `work` in one transaction, again from the start after a deadlock or serialization failure. */
  private async transaction<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      let broken: Error | undefined;
      // pg-pool listens for a client's 'error' only while it is idle: a server that goes away in
      // the middle of a transaction would otherwise crash the process with an unhandled 'error'.
      // The query in flight rejects anyway; the client is then discarded, not reused.
      const onError = (err: Error) => {
        broken ??= err;
      };
      client.on('error', onError);
      try {
        // Explicitly: the design above relies on each statement seeing what was committed before it.
        await client.query('BEGIN ISOLATION LEVEL READ COMMITTED');
        const result = await work(client);
        await client.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch((e: Error) => (broken = e));
        if (!isRetryable(err) || attempt >= MAX_ATTEMPTS) throw asDataError(err);
      } finally {
        // A connection that cannot even roll back is discarded, not handed to the next batch.
        client.off('error', onError);
        client.release(broken);
      }
      await sleep(backoffMs(attempt, 10, Number.POSITIVE_INFINITY));
    }
  }

  async applyEvents(events: readonly ImageEvent[], nowMs: number, options: ApplyOptions = {}): Promise<ApplyResult> {
    if (events.length === 0) return { outcomes: [], projects: [] };
    assertStorable(events);
    const overwrite = options.overwrite ?? false;
    const dedupe = !overwrite && (options.dedupe ?? true);
    const messageIds = [...new Set(events.map((e) => e.messageId))].sort();
    const imageIds = [...new Set(events.map((e) => e.imageId))].sort();
    return this.transaction(async (client) => {
      // 1. Claim the message ids (sorted, so two overlapping batches wait for each other in one order).
      const claimed = new Set<string>();
      if (dedupe) {
        const { rows } = await client.query<{ message_id: string }>(
          `INSERT INTO processed_messages (message_id, seen_at)
           SELECT id, $2::bigint FROM unnest($1::text[]) AS t(id) ORDER BY id
           ON CONFLICT (message_id) DO NOTHING
           RETURNING message_id`,
          [messageIds, nowMs],
        );
        for (const r of rows) claimed.add(r.message_id);
      }
      // 2. Lock the images, present or not, in ascending key order; then read the current rows.
      await client.query(
        `SELECT pg_advisory_xact_lock($2::int, k)
         FROM (SELECT DISTINCT hashtext(id) AS k FROM unnest($1::text[]) AS t(id) ORDER BY k) AS keys`,
        [imageIds, IMAGE_LOCK_CLASS],
      );
      const { rows } = await client.query<ImageRow>('SELECT * FROM images WHERE image_id = ANY($1::text[])', [imageIds]);
      const current = new Map(rows.map((r) => [r.image_id, fromRow(r)]));

      // 3. The shared rules. An id is new if this transaction claimed it and the batch has not used it yet.
      const marked = new Set<string>();
      const staged = new Map<string, ImageRecord>();
      const tx: LedgerTransaction = {
        seen: (m) => !claimed.has(m.messageId) || marked.has(m.messageId),
        markSeen: (m) => void marked.add(m.messageId),
        get: (id) => staged.get(id) ?? current.get(id),
        put: (r) => void staged.set(r.imageId, r),
      };
      const { deltas, ...result } = applyEventsTo(tx, events, nowMs, dedupe, overwrite);

      if (staged.size > 0) {
        const records = [...staged.values()].sort((a, b) => (a.imageId < b.imageId ? -1 : 1));
        const column = <K extends keyof ImageRecord>(k: K) => records.map((r) => r[k]);
        await client.query(
          // listed_pass: a reconcile's mark given with the write (ApplyOptions.listedBy), else the mark the record had.
          `INSERT INTO images (image_id, project_id, status, size, created_at, updated_at, ts, message_id, importing, protected, deleted, listed_pass)
           SELECT t.*, $12::text FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                                $8::text[], $9::text[], $10::boolean[], $11::boolean[]) AS t
           ON CONFLICT (image_id) DO UPDATE SET project_id = excluded.project_id, status = excluded.status, size = excluded.size,
             created_at = excluded.created_at, updated_at = excluded.updated_at, ts = excluded.ts, message_id = excluded.message_id,
             importing = excluded.importing, protected = excluded.protected, deleted = excluded.deleted,
             listed_pass = coalesce(excluded.listed_pass, images.listed_pass)`,
          [
            column('imageId'),
            column('projectId'),
            column('status'),
            column('size'),
            column('createdAt'),
            column('updatedAt'),
            column('timestamp'),
            column('messageId'),
            column('importing'),
            column('protected'),
            column('deleted'),
            options.listedBy ?? null,
          ],
        );
      }

      const totals = new Map<string, UsageTotals>();
      const changed = [...deltas]
        .filter(([, d]) => d.count !== 0 || d.uploading !== 0 || d.sizeBytes !== 0 || d.stageBytes !== 0)
        .sort(([a], [b]) => (a < b ? -1 : 1));
      if (changed.length > 0) {
        const delta = (k: keyof UsageTotals) => changed.map(([, d]) => d[k]);
        const { rows: after } = await client.query<{ project_id: string; count: string; uploading: string; size_bytes: string; stage_bytes: string }>(
          `INSERT INTO project_totals (project_id, count, uploading, size_bytes, stage_bytes)
           SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS t(p) ORDER BY p
           ON CONFLICT (project_id) DO UPDATE SET count = project_totals.count + excluded.count,
             uploading = project_totals.uploading + excluded.uploading,
             size_bytes = project_totals.size_bytes + excluded.size_bytes,
             stage_bytes = project_totals.stage_bytes + excluded.stage_bytes
           RETURNING project_id, count, uploading, size_bytes, stage_bytes`,
          [changed.map(([p]) => p), delta('count'), delta('uploading'), delta('sizeBytes'), delta('stageBytes')],
        );
        // BIGINT holds 2^63, but usage() reads totals as JS numbers, exact only up to 2^53.
        for (const r of after) {
          for (const v of [r.count, r.uploading, r.size_bytes, r.stage_bytes]) {
            if (!Number.isSafeInteger(Number(v))) throw totalsOverflow(r.project_id, Number(v));
          }
          totals.set(r.project_id, {
            count: Number(r.count),
            uploading: Number(r.uploading),
            sizeBytes: Number(r.size_bytes),
            stageBytes: Number(r.stage_bytes),
          });
        }
      }
      // Projects whose totals this batch left as they were are not here: `usage` reads them.
      return { ...result, totals };
    });
  }

  async usage(projectId: string): Promise<Usage> {
    const { rows } = await this.pool.query<{ count: string; uploading: string; size_bytes: string; stage_bytes: string }>(
      'SELECT count, uploading, size_bytes, stage_bytes FROM project_totals WHERE project_id = $1',
      [projectId],
    );
    const t = rows[0];
    return usageFromTotals(
      t ? { count: Number(t.count), uploading: Number(t.uploading), sizeBytes: Number(t.size_bytes), stageBytes: Number(t.stage_bytes) } : ZERO_TOTALS,
    );
  }

  async usages(projectIds: readonly string[]): Promise<Map<string, Usage>> {
    const out = new Map<string, Usage>(projectIds.map((p) => [p, usageFromTotals(ZERO_TOTALS)]));
    if (projectIds.length === 0) return out;
    const { rows } = await this.pool.query<{ project_id: string; count: string; uploading: string; size_bytes: string; stage_bytes: string }>(
      'SELECT project_id, count, uploading, size_bytes, stage_bytes FROM project_totals WHERE project_id = ANY($1::text[])',
      [projectIds],
    );
    for (const t of rows)
      out.set(
        t.project_id,
        usageFromTotals({ count: Number(t.count), uploading: Number(t.uploading), sizeBytes: Number(t.size_bytes), stageBytes: Number(t.stage_bytes) }),
      );
    return out;
  }

  async images(projectId: string): Promise<ImageRecord[]> {
    const { rows } = await this.pool.query<ImageRow>('SELECT * FROM images WHERE project_id = $1 ORDER BY image_id', [projectId]);
    return rows.map(fromRow);
  }

  async removableImages(projectId: string, limit: number): Promise<ImageRecord[]> {
    // COLLATE "C" orders ids by bytes, as JS orders these (ASCII) ids.
    const { rows } = await this.pool.query<ImageRow>(
      `SELECT * FROM images WHERE project_id = $1 AND status = 'queued' AND NOT deleted ORDER BY created_at DESC, image_id DESC LIMIT $2`,
      [projectId, limit],
    );
    return rows.map(fromRow);
  }

  async imagesCreatedSince(projectId: string, sinceSeconds: number): Promise<ImageRecord[]> {
    const { rows } = await this.pool.query<ImageRow>(`SELECT ${IMAGE_COLUMNS} FROM images WHERE project_id = $1 AND created_at >= $2`, [
      projectId,
      sinceSeconds,
    ]);
    return rows.map(fromRow);
  }

  async projects(page?: { after: string; limit: number }): Promise<string[]> {
    if (page) {
      // A page is walked in COLLATE "C" order (code points), which is JS's (UTF-16) for every id
      // but those mixing characters past U+FFFF with U+E000-U+FFFF; the walk still meets each
      // project once.
      const { rows } = await this.pool.query<{ project_id: string }>(
        'SELECT project_id FROM project_totals WHERE project_id > $1 AND count > 0 ORDER BY project_id LIMIT $2',
        [page.after, page.limit],
      );
      return rows.map((r) => r.project_id);
    }
    const { rows } = await this.pool.query<{ project_id: string }>('SELECT project_id FROM project_totals WHERE count > 0');
    // Sorted here, as JS sorts, rather than by any collation.
    return rows.map((r) => r.project_id).sort();
  }

  async recordsOf(imageIds: readonly string[]): Promise<ImageRecord[]> {
    if (imageIds.length === 0) return [];
    const { rows } = await this.pool.query<ImageRow>(`SELECT ${IMAGE_COLUMNS} FROM images WHERE image_id = ANY($1::text[])`, [[...new Set(imageIds)]]);
    return rows.map(fromRow);
  }

  /**
   * Row locks only, on rows applyEvents may be upserting in the same moment: the ids go in sorted,
   * as a batch upserts them, and a deadlock all the same is retried by transaction(). A batch
   * keeps the mark (or sets its own pass's, listedBy), so either order of the two leaves both effects.
   */
  async markListed(imageIds: readonly string[], passId: string): Promise<ImageRecord[]> {
    if (imageIds.length === 0) return [];
    const ids = [...new Set(imageIds)].sort();
    const { rows } = await this.transaction((client) =>
      client.query<ImageRow>(
        `UPDATE images SET listed_pass = $1 FROM (SELECT image_id FROM images WHERE image_id = ANY($2::text[]) ORDER BY image_id FOR UPDATE) AS locked
         WHERE images.image_id = locked.image_id RETURNING ${IMAGES_COLUMNS}`,
        [passId, ids],
      ),
    );
    return rows.map(fromRow);
  }

  async unmarkedLive(passId: string, cursor: string, limit: number): Promise<{ records: ImageRecord[]; cursor: string }> {
    // Keyset on the image id (COLLATE "C"): each page starts in the index where the last one ended.
    const { rows } = await this.pool.query<ImageRow>(
      `SELECT ${IMAGE_COLUMNS} FROM images WHERE image_id > $1 AND ${LIVE} AND listed_pass IS DISTINCT FROM $2 ORDER BY image_id LIMIT $3`,
      [cursor, passId, limit],
    );
    const records = rows.map(fromRow);
    return { records, cursor: records.length < limit ? '' : records.at(-1)!.imageId };
  }

  /**
   * Safe beside concurrent batches: a dead record counts for nothing, so a batch that read it
   * before it went (or finds it gone) adds the same deltas; and an all-zero totals row is the
   * same as none, so deleting one races with nothing (READ COMMITTED re-checks the WHERE on a row
   * a batch just updated, and an upsert re-creates a row deleted under it).
   */
  async forgetDeadImagesBefore(beforeMs: number): Promise<number> {
    const { rowCount } = await this.pool.query(
      `DELETE FROM images WHERE (deleted OR status IN ('killed', 'pending_delete', 'deleted')) AND updated_at * 1000 < $1`,
      [beforeMs],
    );
    await this.pool.query('DELETE FROM project_totals WHERE count = 0 AND uploading = 0 AND size_bytes = 0 AND stage_bytes = 0');
    return rowCount ?? 0;
  }

  async forgetMessagesBefore(beforeMs: number): Promise<number> {
    return (await this.pool.query('DELETE FROM processed_messages WHERE seen_at < $1', [beforeMs])).rowCount ?? 0;
  }

  async recordActions(actions: readonly ActionRecord[]): Promise<ActionRecord[]> {
    if (actions.length === 0) return [];
    return this.transaction(async (client) => {
      const kept: ActionRecord[] = [];
      for (const a of actions) {
        const detail = JSON.stringify({ over: a.over, usage: a.usage, limits: a.limits });
        // The partial unique index turns a second would-delete of an image into a no-op.
        const r = await client.query(
          `INSERT INTO actions (at_ms, project_id, image_id, action, reason, detail) VALUES ($1, $2, $3, $4, $5, $6::jsonb)
           ON CONFLICT DO NOTHING`,
          [a.atMs, a.projectId, a.imageId, a.action, a.reason, detail],
        );
        if (r.rowCount === 1) kept.push(a);
      }
      return kept;
    });
  }

  async actions(query: { projectId?: string; sinceMs?: number } = {}): Promise<ActionRecord[]> {
    const { rows } = await this.pool.query<ActionRow>(
      `SELECT at_ms, project_id, image_id, action, reason, detail FROM actions
       WHERE ($1::text IS NULL OR project_id = $1) AND ($2::bigint IS NULL OR at_ms >= $2) ORDER BY id`,
      [query.projectId ?? null, query.sinceMs ?? null],
    );
    return rows.map((r) => ({
      atMs: Number(r.at_ms),
      projectId: r.project_id,
      imageId: r.image_id,
      action: r.action,
      reason: r.reason,
      over: r.detail.over,
      usage: r.detail.usage,
      limits: r.detail.limits,
    }));
  }

  async forgetActionsBefore(beforeMs: number): Promise<number> {
    return (await this.pool.query('DELETE FROM actions WHERE at_ms < $1', [beforeMs])).rowCount ?? 0;
  }

  async getState(key: string): Promise<string | undefined> {
    const { rows } = await this.pool.query<{ value: string }>('SELECT value FROM enforcer_state WHERE key = $1', [key]);
    return rows[0]?.value;
  }

  async setState(key: string, value: string): Promise<void> {
    await this.pool.query('INSERT INTO enforcer_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  /**
   * Serialised per project by an advisory lock held to the commit, so that the count, the open
   * reservations and the insert are one step for every gate on this database. A release needs no
   * lock: it only ends reservations, and one committed after the count here is as if it came next.
   */
  async reserveCreate(projectId: string, bounds: AdmissionBounds, nowMs: number, expiresAtMs: number): Promise<CreateReservation> {
    return this.transaction(async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [ADMISSION_LOCK_CLASS, projectId]);
      // The DELETE's effect is not visible to the SELECTs of the same statement: they filter too.
      const { rows } = await client.query<{ reserved: string; count: string | null }>(
        `WITH expired AS (DELETE FROM admission_reservations WHERE project_id = $1 AND expires_at <= $2)
         SELECT (SELECT count(*) FROM admission_reservations WHERE project_id = $1 AND expires_at > $2) AS reserved,
                (SELECT count FROM project_totals WHERE project_id = $1) AS count`,
        [projectId, nowMs],
      );
      const reserved = Number(rows[0]!.reserved);
      const count = Number(rows[0]!.count ?? 0);
      const admitted = judgeAdmission(count, reserved, bounds).admit;
      if (admitted) await client.query('INSERT INTO admission_reservations (project_id, expires_at) VALUES ($1, $2)', [projectId, expiresAtMs]);
      return { admitted, count, reserved };
    });
  }

  async releaseReservations(creates: ReadonlyMap<string, number>, nowMs: number): Promise<number> {
    const projects = [...creates].filter(([, n]) => n > 0);
    await this.pool.query('DELETE FROM admission_reservations WHERE expires_at <= $1', [nowMs]);
    if (projects.length === 0) return 0;
    const { rowCount } = await this.pool.query(
      `DELETE FROM admission_reservations WHERE id IN (
         SELECT id FROM (
           SELECT a.id, c.n, row_number() OVER (PARTITION BY a.project_id ORDER BY a.expires_at, a.id) AS k
           FROM admission_reservations a JOIN unnest($1::text[], $2::int[]) AS c(project_id, n) ON c.project_id = a.project_id
           WHERE a.expires_at > $3) ranked
         WHERE k <= n)`,
      [projects.map(([p]) => p), projects.map(([, n]) => n), nowMs],
    );
    return rowCount ?? 0;
  }

  async acquireLease(name: string, holder: string, ttlMs: number, nowMs: number): Promise<boolean> {
    // One statement: concurrent inserts of a new name wait on each other, and the loser's
    // ON CONFLICT then sees the winner's row, which it takes over only if it is its own or expired.
    const { rowCount } = await this.pool.query(
      `INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3::bigint + $4::bigint)
       ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms
       WHERE leases.holder = EXCLUDED.holder OR leases.until_ms <= $4::bigint`,
      [name, holder, ttlMs, nowMs],
    );
    return rowCount === 1;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    await this.pool.query('DELETE FROM leases WHERE name = $1 AND holder = $2', [name, holder]);
  }

  async leaseUntil(name: string): Promise<number | undefined> {
    const { rows } = await this.pool.query<{ until_ms: string }>('SELECT until_ms FROM leases WHERE name = $1', [name]);
    return rows[0] === undefined ? undefined : Number(rows[0].until_ms);
  }

  async close(): Promise<void> {
    if (!this.pool.ended) await this.pool.end();
  }
}
