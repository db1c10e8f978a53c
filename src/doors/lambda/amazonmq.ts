import { EnforcerError } from '../../errors.js';
import { countOutcomes, EnforcementFailedError, enforcementDeadline, excerpt, ingestRecords, type MessageCounts } from './batch.js';
import type { ProjectFailure } from '../../pipeline/index.js';
import { decodeHeaders, describeIssue, parseEvent, RabbitMqEvent, RabbitMqMessage, type InvocationContext } from './events.js';
import { writeInvocationMetrics, type InvocationMetrics } from './metrics.js';
import { inInvocation, type FunctionServices } from './instance.js';

export interface RabbitMqBatchSummary {
  messages: MessageCounts;
  /** Projects decided for, in order. */
  projects: string[];
  /** Actions taken (or, in dry-run, would-deletes recorded). */
  actions: number;
  /**
   * Projects whose enforcement failed in ENFORCE_MAX_ATTEMPTS invocations in a row, this one
   * included: reported and left to the scheduled reconcile, so that the batch stops coming back.
   */
  abandoned: string[];
}

interface Delivery {
  /** `"<queue>::<vhost>"` and the message's place in it, for the log. */
  queue: string;
  index: number;
  body: Buffer | undefined;
  /** Why the message could not even be read as a delivery (its body is then not parsed). */
  unreadable?: string;
  message: unknown;
}

/**
 * The Amazon MQ door: an `aws:rmq` batch through the same pipeline as `consume`.
 *
 * Lambda has no partial-batch response for Amazon MQ: any error returns the whole batch to the
 * queue. So a poison message (not JSON, not a notification, not even base64) never fails the
 * batch: it is logged with its reason and its body, and the batch goes on. A store failure, and
 * an enforcement failure (Keystone, Glance), fail the invocation, and the batch comes back: its
 * messages are then duplicates that change nothing, and the projects they name are decided again
 * (see `IngestResult.projects`). So does a project deferred (busy elsewhere, within its interval,
 * or not started before the deadline). A project whose enforcement failed in ENFORCE_MAX_ATTEMPTS
 * invocations in a row (counted in the store, `enforce.failures:<project>`, cleared by a success)
 * no longer fails it: it is reported and left to the scheduled reconcile, so that one broken
 * project cannot have the batch redelivered forever.
 *
 * @example
 *   const summary = await handleRabbitMqEvent(services, event);
 *   // { messages: { applied: 27, duplicate: 0, ignored: 9, invalid: 0 }, projects: ['6156...'], actions: 0 }
 */
export async function handleRabbitMqEvent(services: FunctionServices, event: unknown, context?: InvocationContext): Promise<RabbitMqBatchSummary> {
  const { log, pipeline } = services;
  const metrics = (m: InvocationMetrics) => services.metrics && writeInvocationMetrics(services.metrics, 'amazonmq', m);
  const { rmqMessagesByQueue, eventSourceArn } = parseEvent(RabbitMqEvent, event, 'aws:rmq');
  const deliveries: Delivery[] = [];
  for (const [queue, messages] of Object.entries(rmqMessagesByQueue)) {
    messages.forEach((message, index) => {
      const parsed = RabbitMqMessage.safeParse(message);
      if (parsed.success) deliveries.push({ queue, index, body: Buffer.from(parsed.data.data, 'base64'), message: parsed.data });
      else deliveries.push({ queue, index, body: undefined, unreadable: `aws:rmq message: ${describeIssue(parsed.error)}`, message });
    });
  }
  let ingested: Awaited<ReturnType<typeof ingestRecords>>;
  try {
    ingested = await ingestRecords(pipeline, deliveries);
  } catch (err) {
    log.error({ err: (err as Error).message, messages: deliveries.length }, 'store write failed; the invocation fails and Amazon MQ redelivers the batch');
    metrics({ storeErrors: 1 });
    throw err;
  }

  const { result, outcomes } = ingested;
  deliveries.forEach((d, i) => {
    const outcome = outcomes[i]!;
    if (outcome.result !== 'invalid') return;
    // The record of a poison message: Amazon MQ cannot reject one message of a batch, and the
    // batch must go on, so the log line carries what an operator needs to find and replay it.
    const properties = (d.message as { basicProperties?: { headers?: Record<string, unknown> | null; messageId?: unknown } } | null)?.basicProperties;
    log.warn(
      {
        reason: outcome.reason ?? 'invalid',
        queue: d.queue,
        position: d.index,
        eventSourceArn,
        messageId: typeof properties?.messageId === 'string' ? properties.messageId : undefined,
        headers: properties?.headers && typeof properties.headers === 'object' ? decodeHeaders(properties.headers) : undefined,
        bytes: d.body?.length,
        body: d.body ? excerpt(d.body) : undefined,
      },
      'invalid notification set aside; the batch goes on',
    );
  });

  const counts = countOutcomes(outcomes);
  const projects = result.projects;
  const deadlineMs = enforcementDeadline(pipeline, context);
  const { reports, failures, deferred } = await enforceWaitingForBusy(services, projects, deadlineMs);
  const actions = reports.reduce((n, r) => n + r.actions.length, 0);
  const { failing, abandoned } = await countFailures(services, reports, failures);
  metrics({ messages: counts, reports, enforcementErrors: failures.length, abandoned: abandoned.length });
  for (const f of failures.filter((f) => abandoned.includes(f.projectId))) {
    log.error(
      { projectId: f.projectId, attempts: services.config.enforceMaxAttempts, err: f.error.message },
      'enforcement keeps failing; project left to the reconcile (ENFORCE_MAX_ATTEMPTS), the batch is not failed for it',
    );
  }
  if (failing.length > 0) {
    const error = new EnforcementFailedError(failing);
    log.error(
      { err: error.message, messages: counts, deferred },
      'the invocation fails and Amazon MQ redelivers the batch; it is committed, so only the enforcement runs again',
    );
    throw error;
  }
  if (deferred.length > 0) {
    log.warn({ deferred, messages: counts }, 'projects deferred (busy, or the deadline); the invocation fails so that Amazon MQ redelivers the batch');
    throw new ProjectsDeferredError(deferred);
  }
  log.info({ messages: counts, projects: projects.length, actions, abandoned }, 'Amazon MQ batch done');
  return { messages: counts, projects, actions, abandoned };
}

/** How long in all an invocation waits for busy projects: this many intervals (at least a second each). */
const BUSY_INTERVALS = 3;

/**
 * `enforceAll`, then again for the projects it deferred as busy, once the first of their leases
 * ends, while the deadline allows: a project decided by another instance a moment ago (a burst
 * spans batches) is free again within ENFORCE_INTERVAL_SECONDS, and waiting for it here is
 * cheaper than having the whole batch redelivered. What is still deferred at the end fails the
 * invocation.
 */
async function enforceWaitingForBusy({ pipeline, config }: FunctionServices, projects: readonly string[], deadlineMs: number | undefined) {
  const options = deadlineMs === undefined ? {} : { deadlineMs };
  const result = await pipeline.enforceAll(projects, options);
  let left = BUSY_INTERVALS * Math.max(1_000, config.enforceIntervalMs);
  for (let waitMs = result.busyRetryMs; waitMs !== undefined && waitMs <= left && result.deferred.length > 0; ) {
    if (deadlineMs !== undefined && pipeline.now() + waitMs >= deadlineMs) break;
    await new Promise((r) => setTimeout(r, waitMs));
    left -= waitMs;
    const again = await pipeline.enforceAll(result.deferred, options);
    result.reports.push(...again.reports);
    result.failures.push(...again.failures);
    result.deferred = again.deferred;
    waitMs = again.busyRetryMs;
  }
  return result;
}

const failuresKey = (projectId: string) => `enforce.failures:${projectId}`;

/**
 * Each failed project's count of invocations in a row that failed it, kept in the store (any
 * instance may get the redelivery), and cleared by a success. The failures still under
 * ENFORCE_MAX_ATTEMPTS fail the invocation; the others are abandoned to the reconcile.
 */
async function countFailures(
  { pipeline, config }: FunctionServices,
  reports: readonly { projectId: string }[],
  failures: readonly ProjectFailure[],
): Promise<{ failing: ProjectFailure[]; abandoned: string[] }> {
  const { ledger } = pipeline;
  await Promise.all(
    reports.map(async ({ projectId }) => {
      if (((await ledger.getState(failuresKey(projectId))) ?? '0') !== '0') await ledger.setState(failuresKey(projectId), '0');
    }),
  );
  const failing: ProjectFailure[] = [];
  const abandoned: string[] = [];
  for (const f of failures) {
    const attempts = Number((await ledger.getState(failuresKey(f.projectId))) ?? '0') + 1;
    await ledger.setState(failuresKey(f.projectId), String(attempts));
    if (attempts >= config.enforceMaxAttempts) abandoned.push(f.projectId);
    else failing.push(f);
  }
  return { failing, abandoned };
}

/** Projects left undecided (busy, or the deadline): the batch must come back for them. */
export class ProjectsDeferredError extends EnforcerError {
  override readonly code = 'PROJECTS_DEFERRED';
  constructor(readonly projects: readonly string[]) {
    super(
      `${projects.length} project(s) deferred (decided elsewhere, within ENFORCE_INTERVAL_SECONDS, or past the deadline): ${projects.slice(0, 20).join(', ')}`,
    );
  }
}

/**
 * The Lambda handler for `rabbitmq` events, over services built once per instance.
 *
 * @example
 *   export const handler = amazonMqHandler(servicesFromEnvironment);
 */
export function amazonMqHandler(services: () => Promise<FunctionServices>) {
  return (event: unknown, context?: InvocationContext): Promise<RabbitMqBatchSummary> =>
    inInvocation(context, async () => handleRabbitMqEvent(await services(), event, context));
}
