import type { Logger } from '../log.js';
import { parseNotification, type DoorLimits, type ImageEvent } from '../notification/parse.js';
import { createsByProject } from '../quota/admission.js';
import { applyIsolatingPoison } from '../store/isolate.js';
import type { LedgerStore } from '../store/port.js';
import type { CommittedTotals } from './committed.js';

export type MessageResult = 'applied' | 'duplicate' | 'ignored' | 'invalid';

export interface MessageOutcome {
  result: MessageResult;
  /** Why a message was ignored or invalid: for the log line and the dead-letter header. */
  reason?: string;
  event?: ImageEvent;
}

/** What one batch did: the one result of a write, from the store's commit to the door's acks. */
export interface IngestResult {
  /** One per body, in input order. */
  outcomes: MessageOutcome[];
  /**
   * The projects to decide for next, sorted: those whose ledger the batch changed, and those named
   * by its duplicates. A batch whose enforcement failed comes back whole (redelivered, or
   * retried); its messages are then duplicates that change nothing, and without them the project
   * would wait for the next reconcile.
   */
  projects: string[];
}

export interface IngestParts {
  store: LedgerStore;
  door: DoorLimits;
  clock: () => number;
  committed: CommittedTotals;
  log?: Logger | undefined;
}

/**
 * Parse a batch of raw bodies and apply the image events in one atomic store write. Invalid and
 * ignored bodies never fail the batch, nor does a message the store refuses for its data (it is
 * isolated by bisection and made invalid); a store outage rejects the whole call, so the caller
 * acknowledges nothing and the broker redelivers.
 */
export async function ingest({ store, door, clock, committed, log }: IngestParts, bodies: readonly (Uint8Array | string)[]): Promise<IngestResult> {
  const outcomes: MessageOutcome[] = new Array(bodies.length);
  const events: ImageEvent[] = [];
  const positions: number[] = [];
  /** Bodies too large to parse whose scanned event is applied: they stay invalid (dead-lettered). */
  const scanned = new Map<number, string>();
  const now = clock();
  bodies.forEach((body, i) => {
    const parsed = parseNotification(body, now, door);
    if (parsed.kind === 'image') {
      events.push(parsed.event);
      positions.push(i);
    } else {
      outcomes[i] = { result: parsed.kind, reason: parsed.reason };
      if (parsed.kind === 'invalid' && parsed.event) {
        scanned.set(events.length, parsed.reason);
        events.push(parsed.event);
        positions.push(i);
      }
    }
  });
  if (events.length === 0) return { outcomes, projects: [] };
  // A message whose data the store refuses is isolated and made invalid (dead-lettered by the
  // door); it never holds up the messages behind it.
  const applied = await applyIsolatingPoison(store, events, clock());
  await endReservations(store, events, applied.outcomes, clock(), log);
  if (applied.totals) committed.remember(applied.totals, clock());
  const projects = new Set(applied.projects);
  applied.outcomes.forEach((result, k) => {
    const event = events[k]!;
    const scannedReason = scanned.get(k);
    if (scannedReason !== undefined) {
      // Dead-lettered all the same; its project is decided on whether the ledger changed or not.
      projects.add(event.projectId);
      outcomes[positions[k]!] = { result: 'invalid', reason: scannedReason, event };
      return;
    }
    if (result === 'duplicate') projects.add(event.projectId);
    outcomes[positions[k]!] = typeof result === 'string' ? { result, event } : { result: 'invalid', reason: `the ledger store refused it: ${result.refused}` };
  });
  return { outcomes, projects: [...projects].sort() };
}

/**
 * The admission endpoint's reservations that the batch's image.creates fulfil. After the commit,
 * never before: for a moment both count, which can only refuse, never admit too many. A store
 * that fails here fails nothing else: the reservations end at their TTL instead.
 */
async function endReservations(
  store: LedgerStore,
  events: readonly ImageEvent[],
  outcomes: readonly unknown[],
  nowMs: number,
  log: Logger | undefined,
): Promise<void> {
  const creates = createsByProject(events, outcomes);
  if (creates.size === 0) return;
  try {
    await store.releaseReservations(creates, nowMs);
  } catch (err) {
    log?.warn({ err: (err as Error).message, projects: creates.size }, 'ending admission reservations failed; they end at ADMISSION_RESERVATION_SECONDS');
  }
}
