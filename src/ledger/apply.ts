import type { ImageEvent } from '../notification/parse.js';
import { mergeRecord, recordFromEvent, type ImageRecord } from './record.js';
import { ZERO_TOTALS, addTotals, contributionOf, type UsageTotals } from './usage.js';

export type ApplyOutcome = 'applied' | 'duplicate';

/** What one atomic write did; `O` is what each event came to (a store refusing one names why). */
export interface ApplyResult<O = ApplyOutcome> {
  /** One per input event, in input order. */
  outcomes: O[];
  /** Projects whose records changed (both sides of an ownership change), sorted. */
  projects: string[];
  /**
   * Where the store has them at hand (it wrote them in the same transaction): the totals of some
   * or all of `projects` as this batch committed them, so that deciding for them right after needs
   * no read of the store. A project left out is read with `usage`.
   */
  totals?: ReadonlyMap<string, UsageTotals>;
}

/**
 * A store's view of its own data inside one transaction. Stores that can run the rules in-process
 * (memory, SQLite, and PostgreSQL inside its transaction) implement it and share `applyEventsTo`;
 * Redis runs the same rules server-side in their Lua twin, src/store/redis/apply.lua, and the
 * contract suite holds every store to the same results.
 */
export interface LedgerTransaction {
  /**
   * Whether the store holds this message already. A redelivery repeats the body byte for byte, so
   * a store may key by the message id alone or by the id and the oslo timestamp (SQLite: the
   * timestamp leads its key, which makes its inserts appends).
   */
  seen(message: MessageKey): boolean;
  markSeen(message: MessageKey, atMs: number): void;
  get(imageId: string): ImageRecord | undefined;
  put(record: ImageRecord): void;
}

/** What identifies a notification for dedupe. */
export type MessageKey = Pick<ImageEvent, 'messageId' | 'timestamp'>;

export interface AppliedBatch extends ApplyResult {
  /** Per project, what the batch changed in its totals: the store adds these in the same transaction. */
  deltas: Map<string, UsageTotals>;
}

/**
 * Lua twin: `same` in src/store/redis/apply.lua.
 * Every field: a Glance listing keeps one message id per image (`glance-api:<id>`) however its
 * state changes, so the message id alone cannot tell two of its records apart.
 */
export function sameRecord(a: ImageRecord, b: ImageRecord): boolean {
  return (
    a.messageId === b.messageId &&
    a.deleted === b.deleted &&
    a.projectId === b.projectId &&
    a.status === b.status &&
    a.size === b.size &&
    a.createdAt === b.createdAt &&
    a.updatedAt === b.updatedAt &&
    a.timestamp === b.timestamp &&
    a.importing === b.importing &&
    a.protected === b.protected
  );
}

/**
 * Dedupe by message id, merge each event into its image's record, keep the totals in step.
 * Lua twin: src/store/redis/apply.lua, phase 1.
 * `overwrite` is for Glance's own word (a listing, a confirmed delete): the event replaces the
 * record outright, with no version merge and no sticky tombstone, because the bus may have lied.
 */
export function applyEventsTo(tx: LedgerTransaction, events: readonly ImageEvent[], nowMs: number, dedupe = true, overwrite = false): AppliedBatch {
  const outcomes: ApplyOutcome[] = [];
  const projects = new Set<string>();
  const deltas = new Map<string, UsageTotals>();
  const addDelta = (project: string, delta: UsageTotals, sign: 1 | -1) => deltas.set(project, addTotals(deltas.get(project) ?? ZERO_TOTALS, delta, sign));
  for (const event of events) {
    if (dedupe) {
      if (tx.seen(event)) {
        outcomes.push('duplicate');
        continue;
      }
      tx.markSeen(event, nowMs);
    }
    outcomes.push('applied');
    const before = tx.get(event.imageId);
    const after = overwrite ? recordFromEvent(event) : mergeRecord(before, event);
    if (before && sameRecord(before, after)) continue;
    tx.put(after);
    if (before) addDelta(before.projectId, contributionOf(before), -1);
    addDelta(after.projectId, contributionOf(after), 1);
    if (before) projects.add(before.projectId);
    projects.add(after.projectId);
  }
  return { outcomes, projects: [...projects].sort(), deltas };
}
