import { StoreDataError } from '../errors.js';
import type { ApplyOutcome, ApplyResult } from '../ledger/apply.js';
import type { ImageEvent } from '../notification/parse.js';
import type { LedgerStore } from './port.js';

/** A message the store refused for its own data, with the store's reason. */
export interface RefusedByStore {
  refused: string;
}

/** `ApplyResult` whose events may each be refused by the store for their own data. */
export type IsolatedApplyResult = ApplyResult<ApplyOutcome | RefusedByStore>;

/**
 * `store.applyEvents`, except that a batch the store refuses for its data (`StoreDataError`) is
 * split in halves, each applied in turn, down to the single messages at fault: those come back
 * refused, every other message is applied. Halves applied one after the other, in order, leave
 * the same ledger as the whole batch would (dedupe and merging see the same sequence). Finding k
 * bad messages among n costs about 2k·log2(n) writes; a clean batch, one. Any other error (an
 * outage) rejects the call, and the door retries the batch as before.
 *
 * @example
 *   const { outcomes } = await applyIsolatingPoison(store, events, Date.now());
 *   // ['applied', { refused: 'message "m-2": imageId holds a NUL character ...' }, 'duplicate']
 */
export async function applyIsolatingPoison(store: LedgerStore, events: readonly ImageEvent[], nowMs: number): Promise<IsolatedApplyResult> {
  try {
    return await store.applyEvents(events, nowMs);
  } catch (err) {
    if (!(err instanceof StoreDataError)) throw err;
    if (events.length === 1) return { outcomes: [{ refused: err.message.slice(0, 500) }], projects: [] };
    const middle = Math.ceil(events.length / 2);
    const first = await applyIsolatingPoison(store, events.slice(0, middle), nowMs);
    const second = await applyIsolatingPoison(store, events.slice(middle), nowMs);
    // The second half committed after the first: its totals are the newer.
    const totals = new Map([...(first.totals ?? []), ...(second.totals ?? [])]);
    return { outcomes: [...first.outcomes, ...second.outcomes], projects: [...new Set([...first.projects, ...second.projects])].sort(), totals };
  }
}
