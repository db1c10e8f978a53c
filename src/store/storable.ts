import { StoreDataError } from '../errors.js';
import type { ImageEvent } from '../notification/parse.js';

/**
 * What every store can keep exactly, checked before a batch touches it. The door rejects most
 * hostile data already (UUID ids, bounded sizes); these are the stores' own limits, so that each
 * store is safe by itself:
 *
 * - numbers are safe integers: the stores' totals and JS's reads of them are exact only up to 2^53;
 * - text is well-formed UTF-16 without NUL: PostgreSQL rejects NUL, and PostgreSQL, Redis and
 *   SQLite keep UTF-8, in which two distinct lone surrogates become the same U+FFFD (two images
 *   would silently share one record, or an id would read back as another image's).
 */
const NUMBERS = ['createdAt', 'updatedAt', 'timestamp'] as const;
const TEXTS = ['messageId', 'projectId', 'imageId', 'status', 'importing'] as const;
/** A high surrogate not followed by a low one, or a low one not preceded by a high one. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Why the store cannot keep `event` exactly, or undefined when it can. */
export function unstorableReason(event: ImageEvent): string | undefined {
  for (const field of TEXTS) {
    const value = event[field];
    if (value.includes('\u0000')) return `${field} holds a NUL character, which the ledger cannot store`;
    if (LONE_SURROGATE.test(value)) return `${field} holds a lone UTF-16 surrogate, which the ledger cannot store faithfully`;
  }
  for (const field of NUMBERS) {
    if (!Number.isSafeInteger(event[field])) return `${field} ${event[field]} is not an integer the ledger keeps exactly (at most 2^53)`;
  }
  if (event.size !== null && !(Number.isSafeInteger(event.size) && event.size >= 0)) {
    return `size ${event.size} is not a byte count the ledger keeps exactly (0 to 2^53)`;
  }
  return undefined;
}

/** Throws a StoreDataError naming the first event the store cannot keep; nothing is written. */
export function assertStorable(events: readonly ImageEvent[]): void {
  for (const event of events) {
    const reason = unstorableReason(event);
    if (reason !== undefined) throw new StoreDataError(`message ${JSON.stringify(event.messageId.slice(0, 100))}: ${reason}`);
  }
}

/** A project's totals past 2^53 can no longer be added exactly (see `assertStorable`). */
export function totalsOverflow(projectId: string, total: number): StoreDataError {
  return new StoreDataError(
    `project ${JSON.stringify(projectId.slice(0, 100))}: its totals would reach ${total}, past 2^53, which the ledger cannot keep exactly`,
  );
}
