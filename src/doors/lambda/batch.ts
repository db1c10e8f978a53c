import { EnforcerError } from '../../errors.js';
import type { MessageOutcome, MessageResult, ProjectFailure } from '../../pipeline.js';

/**
 * What the two message doors of function mode (Amazon MQ, SQS) share: counting outcomes, the
 * error that fails an invocation for its projects, the excerpt of a poison body. Both run
 * `Pipeline.ingest`, then `Pipeline.enforceAll` for the projects the batch names, at once, in the
 * invocation: `consume` hands projects to a worker that retries in the background; a function has
 * no background, so its retry is the redelivery of the batch.
 */

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
