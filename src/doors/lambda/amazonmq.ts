import { countOutcomes, EnforcementFailedError, excerpt, ingestRecords, type MessageCounts } from './batch.js';
import { decodeHeaders, describeIssue, parseEvent, RabbitMqEvent, RabbitMqMessage, type InvocationContext } from './events.js';
import { writeInvocationMetrics, type InvocationMetrics } from './metrics.js';
import { inInvocation, type FunctionServices } from './instance.js';

export interface RabbitMqBatchSummary {
  messages: MessageCounts;
  /** Projects decided for, in order. */
  projects: string[];
  /** Actions taken (or, in dry-run, would-deletes recorded). */
  actions: number;
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
 * (see `IngestResult.projects`).
 *
 * @example
 *   const summary = await handleRabbitMqEvent(services, event);
 *   // { messages: { applied: 27, duplicate: 0, ignored: 9, invalid: 0 }, projects: ['6156...'], actions: 0 }
 */
export async function handleRabbitMqEvent(services: FunctionServices, event: unknown): Promise<RabbitMqBatchSummary> {
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
  const { reports, failures } = await pipeline.enforceAll(projects);
  const actions = reports.reduce((n, r) => n + r.actions.length, 0);
  metrics({ messages: counts, reports, enforcementErrors: failures.length });
  if (failures.length > 0) {
    const error = new EnforcementFailedError(failures);
    log.error(
      { err: error.message, messages: counts },
      'the invocation fails and Amazon MQ redelivers the batch; it is committed, so only the enforcement runs again',
    );
    throw error;
  }
  log.info({ messages: counts, projects: projects.length, actions }, 'Amazon MQ batch done');
  return { messages: counts, projects, actions };
}

/**
 * The Lambda handler for `rabbitmq` events, over services built once per instance.
 *
 * @example
 *   export const handler = amazonMqHandler(servicesFromEnvironment);
 */
export function amazonMqHandler(services: () => Promise<FunctionServices>) {
  return (event: unknown, context?: InvocationContext): Promise<RabbitMqBatchSummary> =>
    inInvocation(context, async () => handleRabbitMqEvent(await services(), event));
}
