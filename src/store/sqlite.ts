import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { applyEventsTo, type ApplyResult, type LedgerTransaction } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import { ZERO_TOTALS, usageFromTotals } from '../ledger/usage.js';
import type { ImageEvent } from '../notification/parse.js';
import type { Usage } from '../quota/resources.js';
import type { ActionKind, ActionRecord, ApplyOptions, LedgerStore } from './port.js';

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
];

interface ActionRow {
  at_ms: number;
  project_id: string;
  image_id: string;
  action: ActionKind;
  reason: string;
  detail: string;
}

interface ImageRow {
  image_id: string;
  project_id: string;
  status: string;
  size: number | null;
  created_at: number;
  updated_at: number;
  ts: number;
  message_id: string;
  importing: string;
  protected: number;
  deleted: number;
}

function fromRow(r: ImageRow): ImageRecord {
  return {
    imageId: r.image_id,
    projectId: r.project_id,
    status: r.status,
    size: r.size,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    timestamp: r.ts,
    messageId: r.message_id,
    importing: r.importing,
    protected: r.protected === 1,
    deleted: r.deleted === 1,
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

  private constructor(db: Database.Database, path: string) {
    this.db = db;
    this.description = `sqlite://${path}`;
    this.stmt = {
      seen: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM processed_messages WHERE message_id = ?'),
      markSeen: db.prepare('INSERT INTO processed_messages (message_id, seen_at) VALUES (?, ?)'),
      get: db.prepare<[string], ImageRow>('SELECT * FROM images WHERE image_id = ?'),
      put: db.prepare(
        `INSERT INTO images (image_id, project_id, status, size, created_at, updated_at, ts, message_id, importing, protected, deleted)
         VALUES (@imageId, @projectId, @status, @size, @createdAt, @updatedAt, @timestamp, @messageId, @importing, @protected, @deleted)
         ON CONFLICT (image_id) DO UPDATE SET project_id = excluded.project_id, status = excluded.status, size = excluded.size,
           created_at = excluded.created_at, updated_at = excluded.updated_at, ts = excluded.ts, message_id = excluded.message_id,
           importing = excluded.importing, protected = excluded.protected, deleted = excluded.deleted`,
      ),
      addTotals: db.prepare(
        `INSERT INTO project_totals (project_id, count, uploading, size_bytes, stage_bytes) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (project_id) DO UPDATE SET count = count + excluded.count, uploading = uploading + excluded.uploading,
           size_bytes = size_bytes + excluded.size_bytes, stage_bytes = stage_bytes + excluded.stage_bytes`,
      ),
      totals: db.prepare<[string], { count: number; uploading: number; size_bytes: number; stage_bytes: number }>(
        'SELECT count, uploading, size_bytes, stage_bytes FROM project_totals WHERE project_id = ?',
      ),
      images: db.prepare<[string], ImageRow>('SELECT * FROM images WHERE project_id = ? ORDER BY image_id'),
      projects: db.prepare<[], { project_id: string }>('SELECT DISTINCT project_id FROM images ORDER BY project_id'),
      forget: db.prepare('DELETE FROM processed_messages WHERE seen_at < ?'),
      recordAction: db.prepare(
        `INSERT OR IGNORE INTO actions (at_ms, project_id, image_id, action, reason, detail) VALUES (?, ?, ?, ?, ?, ?)`,
      ),
      actions: db.prepare<[string | null, string | null, number], ActionRow>(
        'SELECT * FROM actions WHERE (? IS NULL OR project_id = ?) AND at_ms >= ? ORDER BY id',
      ),
      forgetActions: db.prepare('DELETE FROM actions WHERE at_ms < ?'),
    };
  }

  /** Opens (creating the file and its folder if needed) and migrates. ':memory:' works too. */
  static open(path: string): SqliteStore {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    let db: Database.Database;
    try {
      db = new Database(path);
    } catch (err) {
      throw new Error(`STORE_URL: cannot open SQLite file '${path}' (${(err as Error).message}); check the path and its permissions`);
    }
    db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode: a commit survives a process crash; only an OS crash can lose the last ones,
    // which the broker then redelivers because they were not yet acked.
    db.pragma('synchronous = NORMAL');
    db.pragma('busy_timeout = 5000');
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      db.close();
      throw new Error(`STORE_URL: '${path}' has schema version ${version}, newer than this enforcer knows (${MIGRATIONS.length}); upgrade the enforcer`);
    }
    db.transaction(() => {
      for (let v = version; v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${MIGRATIONS.length}`);
    }).immediate();
    return new SqliteStore(db, path);
  }

  async applyEvents(events: readonly ImageEvent[], nowMs: number, options: ApplyOptions = {}): Promise<ApplyResult> {
    const run = this.db.transaction(() => {
      const tx: LedgerTransaction = {
        seen: (id) => this.stmt.seen.get(id) !== undefined,
        markSeen: (id, at) => void this.stmt.markSeen.run(id, at),
        get: (id) => {
          const row = this.stmt.get.get(id);
          return row ? fromRow(row) : undefined;
        },
        put: (r) => void this.stmt.put.run({ ...r, protected: r.protected ? 1 : 0, deleted: r.deleted ? 1 : 0 }),
      };
      const { deltas, ...result } = applyEventsTo(tx, events, nowMs, options.dedupe ?? true);
      for (const [p, d] of deltas) this.stmt.addTotals.run(p, d.count, d.uploading, d.sizeBytes, d.stageBytes);
      return result;
    });
    return run.immediate();
  }

  async usage(projectId: string): Promise<Usage> {
    const t = this.stmt.totals.get(projectId);
    return usageFromTotals(t ? { count: t.count, uploading: t.uploading, sizeBytes: t.size_bytes, stageBytes: t.stage_bytes } : ZERO_TOTALS);
  }

  async images(projectId: string): Promise<ImageRecord[]> {
    return this.stmt.images.all(projectId).map(fromRow);
  }

  async projects(): Promise<string[]> {
    return this.stmt.projects.all().map((r) => r.project_id);
  }

  async forgetMessagesBefore(beforeMs: number): Promise<number> {
    return this.stmt.forget.run(beforeMs).changes;
  }

  async recordActions(actions: readonly ActionRecord[]): Promise<ActionRecord[]> {
    return this.db.transaction(() =>
      actions.filter((a) => {
        const detail = JSON.stringify({ over: a.over, usage: a.usage, limits: a.limits });
        return this.stmt.recordAction.run(a.atMs, a.projectId, a.imageId, a.action, a.reason, detail).changes === 1;
      }),
    ).immediate();
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

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
