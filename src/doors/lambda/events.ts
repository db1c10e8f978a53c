import type { Context, SQSBatchResponse } from 'aws-lambda';
import { z } from 'zod';
import { EnforcerError } from '../../errors.js';
import { describeIssues } from '../../zod-issues.js';

/**
 * The events Lambda hands the function handlers, as zod schemas. Powertools has no schema for
 * `aws:rmq`, so it is written here from the shape Lambda documents for Amazon MQ (RabbitMQ).
 *
 * Validation happens at two levels on purpose. The event's frame (the source, the grouping by
 * queue, the SQS message ids) is what Lambda itself makes: if it is wrong, the function is wired
 * to the wrong trigger, and the invocation fails. Each message inside is what Glance (or anyone
 * with access to the queue) sent: one that does not fit is poison, set aside with its reason, and
 * never fails the rest of its batch.
 */

/** One message of an `aws:rmq` event: the AMQP properties, and the body in base64. */
export const RabbitMqMessage = z.object({
  // Only read for the log line of a poison message; any shape a broker may send is accepted, so
  // an unusual header never turns a good notification into poison.
  basicProperties: z
    .object({
      headers: z.record(z.string(), z.unknown()).nullish(),
      messageId: z.string().nullish(),
    })
    .loose(),
  redelivered: z.boolean().optional(),
  data: z.base64(),
});
export type RabbitMqMessage = z.infer<typeof RabbitMqMessage>;

/**
 * An Amazon MQ (RabbitMQ) event: `rmqMessagesByQueue` maps `"<queue>::<vhost>"` to its messages.
 *
 * @example
 *   const event = RabbitMqEvent.parse({
 *     eventSource: 'aws:rmq',
 *     eventSourceArn: 'arn:aws:mq:eu-west-1:123456789012:broker:glance:b-0f3c...',
 *     rmqMessagesByQueue: { 'glance-quota-enforcer::/': [{ basicProperties: {}, redelivered: false, data: 'eyJvc2xvLnZlcnNpb24iOiAiMi4wIn0=' }] },
 *   });
 */
export const RabbitMqEvent = z.object({
  eventSource: z.literal('aws:rmq'),
  eventSourceArn: z.string().min(1),
  rmqMessagesByQueue: z.record(z.string(), z.array(z.unknown())).superRefine((byQueue, ctx) => {
    for (const key of Object.keys(byQueue)) {
      if (!key.includes('::')) ctx.addIssue({ code: 'custom', path: [key], message: `expected "<queue>::<vhost>", got '${key}'` });
    }
  }),
});
export type RabbitMqEvent = z.infer<typeof RabbitMqEvent>;

/** One record of an SQS event: the body is the raw notification, as the bridge forwarded it. */
export const SqsRecord = z
  .object({
    messageId: z.string().min(1),
    body: z.string(),
    eventSource: z.literal('aws:sqs'),
    eventSourceARN: z.string().min(1),
    attributes: z.object({ ApproximateReceiveCount: z.string().optional() }).loose().optional(),
  })
  .loose();
export type SqsRecord = z.infer<typeof SqsRecord>;

/**
 * An SQS event. Only the message ids are checked at this level: a record that has one but is
 * otherwise odd is poison like any bad body, while a batch without ids could not even be answered
 * with `batchItemFailures`.
 */
export const SqsEvent = z.object({
  Records: z.array(z.object({ messageId: z.string().min(1) }).loose()),
});
export type SqsEvent = z.infer<typeof SqsEvent>;

/** The reply of an SQS handler under `functionResponseType: ReportBatchItemFailures`. */
export type SqsBatchResponse = SQSBatchResponse;

/** An EventBridge schedule event: the reconcile function reads nothing of it but checks it is one. */
export const ScheduledEvent = z
  .object({
    source: z.literal('aws.events'),
    'detail-type': z.literal('Scheduled Event'),
    time: z.string().optional(),
  })
  .loose();

/** What the handlers read of Lambda's context object (tests pass only what they need). */
export type InvocationContext = Partial<Pick<Context, 'awsRequestId' | 'getRemainingTimeInMillis'>>;

/** The event does not have the shape its trigger gives: the function is wired to the wrong source. */
export class EventShapeError extends EnforcerError {
  override readonly code = 'EVENT_SHAPE';
}

/** `schema.parse`, with an error that names the trigger and the field, for the function's log. */
export function parseEvent<T>(schema: z.ZodType<T>, event: unknown, trigger: string): T {
  const parsed = schema.safeParse(event);
  if (parsed.success) return parsed.data;
  throw new EventShapeError(`the event is not an ${trigger} event (${describeIssue(parsed.error)}); check the function's events in serverless.yml`);
}

/** The first issue of a zod error, as `field.path: message` (src/zod-issues.ts). */
export function describeIssue(error: z.ZodError): string {
  return describeIssues(error, { max: 1 });
}

/**
 * RabbitMQ headers as text where Lambda gave bytes: a string header (an AMQP long string) arrives
 * as `{"bytes": [104, 105]}`, decoded here as UTF-8; numbers and booleans stay as they are, tables
 * and arrays are decoded inside.
 */
export function decodeHeaders(headers: Record<string, unknown> | null | undefined): Record<string, unknown> {
  const decode = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(decode);
    if (v !== null && typeof v === 'object') {
      const bytes = (v as { bytes?: unknown }).bytes;
      if (Object.keys(v).length === 1 && Array.isArray(bytes) && bytes.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) {
        return Buffer.from(bytes as number[]).toString('utf8');
      }
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, decode(x)]));
    }
    return v;
  };
  return Object.fromEntries(Object.entries(headers ?? {}).map(([k, v]) => [k, decode(v)]));
}
