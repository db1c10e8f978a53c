import { EnforcerError } from '../../errors.js';
import type { IngestResult, MessageOutcome, MessageResult, Pipeline, ProjectFailure } from '../../pipeline/index.js';
import type { InvocationContext } from './events.js';

/**
 * What the two message doors of function mode (Amazon MQ, SQS) share: counting outcomes, the
 * error that fails an invocation for its projects, the excerpt of a poison body. Both run
 * `Pipeline.ingest`, then `Pipeline.enforceAll` for the projects the batch names, at once, in the
 * invocation: `consume` hands projects to a worker that retries in the background; a function has
 * no background, so its retry is the redelivery of the batch.
 */

/** A record of a function's event as the door decoded it: its body, or why it could not be read at all. */
export interface DecodedRecord {
  body: Uint8Array | string | undefined;
  /** Set when the record itself is malformed: its body (if any) is not fed to the pipeline. */
  unreadable?: string | undefined;
}

/**
 * `Pipeline.ingest` of the readable records, and one outcome per record in event order: the
 * pipeline's, or `invalid` with the reason for an unreadable one. Rejects as `ingest` does (a
 * store outage), and then nothing of the batch is committed.
 */
export async function ingestRecords(pipeline: Pipeline, records: readonly DecodedRecord[]): Promise<{ result: IngestResult; outcomes: MessageOutcome[] }> {
  const result = await pipeline.ingest(records.filter((r) => r.unreadable === undefined && r.body !== undefined).map((r) => r.body!));
  let next = 0;
  const outcomes = records.map(
    (r): MessageOutcome =>
      r.unreadable !== undefined || r.body === undefined ? { result: 'invalid', reason: r.unreadable ?? 'no body' } : result.outcomes[next++]!,
  );
  return { result, outcomes };
}

export type MessageCounts = Record<MessageResult, number>;

export function countOutcomes(outcomes: readonly (MessageOutcome | undefined)[]): MessageCounts {
  const counts: MessageCounts = { applied: 0, duplicate: 0, ignored: 0, invalid: 0 };
  for (const o of outcomes) if (o) counts[o.result]++;
  return counts;
}

/** Failed projects, for an invocation's error: "p1: Glance answered 503 ...; p2: ...". */
export class EnforcementFailedError extends EnforcerError {
  override readonly code = 'ENFORCEMENT_FAILED';
  constructor(readonly failures: readonly ProjectFailure[]) {
    super(`enforcement failed for ${failures.length} project(s): ${failures.map((f) => `${f.projectId}: ${f.error.message}`).join('; ')}`);
  }
}

/** The body as text for a log line, cut to `max` characters: poison is kept where an operator finds it. */
export function excerpt(body: Uint8Array | string, max = 4096): string {
  const text = typeof body === 'string' ? body : Buffer.from(body).toString('utf8');
  return text.length > max ? `${text.slice(0, max)}... (${text.length} characters)` : text;
}

/**
 * What a project's decision started just before the deadline may still take (a listing of a
 * large project, its deletes, the audit): the invocation then has this long to answer.
 */
export const DEADLINE_MARGIN_MS = 10_000;

/**
 * The pipeline time after which no project's decision is started: the invocation's remaining
 * time less DEADLINE_MARGIN_MS. Undefined outside Lambda (no context): no deadline.
 */
export function enforcementDeadline(pipeline: Pipeline, context: InvocationContext | undefined): number | undefined {
  const remaining = context?.getRemainingTimeInMillis?.();
  return remaining === undefined ? undefined : pipeline.now() + remaining - DEADLINE_MARGIN_MS;
}
