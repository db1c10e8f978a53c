import { countOutcomes, enforcementDeadline, excerpt, ingestRecords, type MessageCounts } from './batch.js';
import { describeIssue, parseEvent, SqsEvent, SqsRecord, type InvocationContext, type SqsBatchResponse } from './events.js';
import { writeInvocationMetrics, type InvocationMetrics } from './metrics.js';
import { inInvocation, type FunctionServices } from './instance.js';

export interface SqsBatchSummary extends SqsBatchResponse {
  messages: MessageCounts;
  /** Poison records moved to the dead-letter queue by the function itself. */
  deadLettered: number;
}

/**
 * The SQS door: the records' bodies (raw notifications, forwarded unchanged by `bridge`) through
 * the same pipeline as `consume`, answering `batchItemFailures` for exactly the records to retry:
 *
 * - the store's batch write failed: it was one write for every record, so every record;
 * - a project's enforcement failed (Keystone, Glance), or was deferred (busy: another instance
 *   decides it, or it was listed within ENFORCE_INTERVAL_SECONDS; or not started before the
 *   invocation's deadline): the records whose image belongs to that project. A project touched only as the former owner of a moved image is named by no record;
 *   then every record with an image event is reported. Over-reporting is safe, since a retried
 *   record is a duplicate that changes nothing and only brings its project's decision back;
 * - a poison record (not a notification): never retried. It goes to SQS_DEAD_LETTER_QUEUE_URL at
 *   once with its reason, and is reported only if that send fails; without a dead-letter queue
 *   URL it is reported, and the queue's redrive policy moves it after `maxReceiveCount` receives.
 *
 * Ignored notifications (image.send, task.*, ...) and duplicates are done, like applied ones.
 *
 * @example
 *   const { batchItemFailures } = await handleSqsEvent(services, event);
 */
export async function handleSqsEvent(services: FunctionServices, event: unknown, context?: InvocationContext): Promise<SqsBatchSummary> {
  const { log, pipeline, poison } = services;
  const metrics = (m: InvocationMetrics) => services.metrics && writeInvocationMetrics(services.metrics, 'sqs', m);
  const { Records } = parseEvent(SqsEvent, event, 'aws:sqs');
  const records = Records.map((raw) => {
    const parsed = SqsRecord.safeParse(raw);
    return parsed.success
      ? { messageId: raw.messageId, body: parsed.data.body, unreadable: undefined }
      : { messageId: raw.messageId, body: typeof raw.body === 'string' ? raw.body : undefined, unreadable: `aws:sqs record: ${describeIssue(parsed.error)}` };
  });
  const every = (): SqsBatchSummary => ({
    batchItemFailures: records.map((r) => ({ itemIdentifier: r.messageId })),
    messages: { applied: 0, duplicate: 0, ignored: 0, invalid: 0 },
    deadLettered: 0,
  });

  let ingested: Awaited<ReturnType<typeof ingestRecords>>;
  try {
    ingested = await ingestRecords(pipeline, records);
  } catch (err) {
    log.error({ err: (err as Error).message, records: records.length }, 'store write failed; every record of the batch is reported for retry');
    metrics({ storeErrors: 1 });
    return every();
  }

  const { result, outcomes } = ingested;
  const retry = new Set<string>();

  // Poison: to the dead-letter queue now, or reported for the redrive policy to move.
  let deadLettered = 0;
  await Promise.all(
    records.map(async (r, i) => {
      const outcome = outcomes[i]!;
      if (outcome.result !== 'invalid') return;
      const reason = outcome.reason ?? 'invalid';
      const fields = { reason, messageId: r.messageId, bytes: r.body?.length, body: r.body === undefined ? undefined : excerpt(r.body) };
      if (!poison || r.body === undefined || r.body === '') {
        log.warn(fields, 'invalid notification reported as failed; the redrive policy moves it to the dead-letter queue');
        retry.add(r.messageId);
        return;
      }
      try {
        await poison.send(r.body, reason, r.messageId);
        deadLettered++;
        log.warn({ ...fields, deadLetterQueue: poison.description }, 'invalid notification dead-lettered');
      } catch (err) {
        log.warn({ ...fields, err: (err as Error).message }, 'invalid notification could not be dead-lettered; reported as failed');
        retry.add(r.messageId);
      }
    }),
  );

  const deadlineMs = enforcementDeadline(pipeline, context);
  const { reports, failures, deferred } = await pipeline.enforceAll(result.projects, deadlineMs === undefined ? {} : { deadlineMs });
  // Deferred is not failed (no error counted), but its records come back all the same: their
  // redelivery, after the visibility timeout, brings the project's decision back.
  for (const projectId of [...failures.map((f) => f.projectId), ...deferred]) {
    // A dead-lettered record (a body too large, whose scan named the project) is not retried.
    const counted = (i: number) => outcomes[i]!.result !== 'invalid' && outcomes[i]!.event !== undefined;
    const own = records.filter((_, i) => counted(i) && outcomes[i]!.event!.projectId === projectId);
    const affected = own.length > 0 ? own : records.filter((_, i) => counted(i));
    for (const r of affected) retry.add(r.messageId);
  }

  const batchItemFailures = records.filter((r) => retry.has(r.messageId)).map((r) => ({ itemIdentifier: r.messageId }));
  const messages = countOutcomes(outcomes);
  metrics({ messages, reports, enforcementErrors: failures.length });
  log.info(
    { messages, deadLettered, retried: batchItemFailures.length, failedProjects: failures.map((f) => f.projectId), deferredProjects: deferred },
    'SQS batch done',
  );
  return { batchItemFailures, messages, deadLettered };
}

/**
 * The Lambda handler for `sqs` events (`functionResponseType: ReportBatchItemFailures`), over
 * services built once per instance. Lambda reads only `batchItemFailures` of the reply.
 *
 * @example
 *   export const handler = sqsHandler(servicesFromEnvironment);
 */
export function sqsHandler(services: () => Promise<FunctionServices>) {
  return (event: unknown, context?: InvocationContext): Promise<SqsBatchSummary> =>
    inInvocation(context, async () => handleSqsEvent(await services(), event, context));
}
