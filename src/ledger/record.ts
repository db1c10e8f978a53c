import type { ImageEvent } from '../notification/parse.js';

/** What the ledger keeps of one image: the state from its newest notification, and its tombstone. */
export interface ImageRecord {
  imageId: string;
  projectId: string;
  status: string;
  size: number | null;
  createdAt: number;
  updatedAt: number;
  timestamp: number;
  /** The message that set this state: the last tie-breaker, so merging is a total order. */
  messageId: string;
  importing: string;
  protected: boolean;
  deleted: boolean;
}

export function recordFromEvent(e: ImageEvent): ImageRecord {
  return {
    imageId: e.imageId,
    projectId: e.projectId,
    status: e.status,
    size: e.size,
    createdAt: e.createdAt,
    updatedAt: e.updatedAt,
    timestamp: e.timestamp,
    messageId: e.messageId,
    importing: e.importing,
    protected: e.protected,
    deleted: e.deleted,
  };
}

type Versioned = Pick<ImageRecord, 'updatedAt' | 'timestamp' | 'messageId'>;

/**
 * Which of two notifications is newer. `updated_at` has whole seconds only, so several changes in
 * one second tie on it and oslo's microsecond `timestamp` decides; the message id settles the
 * (theoretical) remaining tie so that the result never depends on arrival order.
 * Lua twin: `compare_version` and `compare_strings` in src/store/redis/apply.lua.
 */
export function compareVersion(a: Versioned, b: Versioned): number {
  if (a.updatedAt !== b.updatedAt) return a.updatedAt < b.updatedAt ? -1 : 1;
  if (a.timestamp !== b.timestamp) return a.timestamp < b.timestamp ? -1 : 1;
  return a.messageId < b.messageId ? -1 : a.messageId > b.messageId ? 1 : 0;
}

/**
 * The ledger's one rule. The state is the newest notification's; the tombstone is sticky. Both
 * parts are commutative, associative and idempotent, so any order or duplication of the same
 * messages ends in the same record. Lua twin: `merge` in src/store/redis/apply.lua.
 */
export function mergeRecord(existing: ImageRecord | undefined, event: ImageEvent): ImageRecord {
  if (!existing) return recordFromEvent(event);
  const winner = compareVersion(event, existing) > 0 ? recordFromEvent(event) : existing;
  const deleted = existing.deleted || event.deleted;
  return winner.deleted === deleted ? winner : { ...winner, deleted };
}
