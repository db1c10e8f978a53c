import type { EnforcementReport, MessageOutcome, MessageResult, Pipeline } from '../../pipeline.js';
import type { Logger } from '../../log.js';
import { EnforcerError } from '../../errors.js';

/**
 * What the two message doors of function mode (Amazon MQ, SQS) do with a batch once decoded:
 * the same `Pipeline.ingest` as `consume`, then the decision and the action for every project the
 * batch names, at once, in the invocation. `consume` hands projects to a worker that retries in
 * the background; a function has no background, so its retry is the redelivery of the batch.
 */

export interface ProjectFailure {
  projectId: string;
  error: Error;
}

export interface BatchEnforcement {
  reports: EnforcementReport[];
  failures: ProjectFailure[];
}

/**
 * `Pipeline.enforce` for each project, one after the other; a failure (Keystone, Glance, the
 * store) is collected, and the projects after it are still enforced.
 */
export async function enforceEach(pipeline: Pipeline, projects: readonly string[], log: Logger): Promise<BatchEnforcement> {
  const reports: EnforcementReport[] = [];
  const failures: ProjectFailure[] = [];
  for (const projectId of projects) {
    try {
      reports.push(await pipeline.enforce(projectId));
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      log.warn({ projectId, err: error.message, kind: error.name }, 'enforcement failed; the batch comes back for it');
      failures.push({ projectId, error });
    }
  }
  return { reports, failures };
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
