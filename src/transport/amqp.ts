import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import amqp from 'amqplib';
import { LRUCache } from 'lru-cache';
import { ConfigError, EnforcerError } from '../errors.js';
import type { Logger } from '../log.js';
import { describeBroker, parseTransportUrl, type BrokerAddress } from './transport-url.js';

export type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';

/**
 * The longest wait on the broker (a confirm, a declaration, a close) before the channel is given
 * up: a broker that never answers must not hold a batch, or a shutdown, for ever.
 */
export const BROKER_TIMEOUT_MS = 30_000;

/** `x-gqe-reason` is for an operator to read: 1 KiB says why, and keeps the header small. */
export const MAX_REASON_BYTES = 1024;

/**
 * The original's headers go along with its dead letter only while they are this small in all.
 * amqplib encodes a message's headers in a 64 KiB scratch buffer and throws beyond it, after the
 * confirm was registered: a 65,400-byte header that RabbitMQ accepted from a publisher would
 * otherwise make every dead-lettering of that message throw, and `consume` stop for good.
 */
export const MAX_COPIED_HEADERS_BYTES = 4096;

export class BrokerTimeoutError extends EnforcerError {
  override readonly code = 'BROKER_TIMEOUT';
}

/** `promise`, or a BrokerTimeoutError naming `what` after `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BrokerTimeoutError(`the broker did not answer ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** `text` cut to at most `maxBytes` of UTF-8 on a character boundary, marked with '…' when cut. */
export function capUtf8(text: string, maxBytes: number): string {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= maxBytes) return text;
  let end = Math.max(0, maxBytes - 3); // '…' is 3 bytes
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return `${bytes.subarray(0, end).toString('utf8')}…`;
}

/** The size of headers as JSON: over what AMQP takes for strings, a bound that errs large. */
function headersSize(headers: Record<string, unknown>): number {
  try {
    return Buffer.byteLength(JSON.stringify(headers) ?? '');
  } catch {
    return Number.POSITIVE_INFINITY; // a value JSON cannot write (a BigInt): not copied
  }
}

export interface DeadLetter {
  msg: amqp.ConsumeMessage;
  reason: string;
}

/**
 * The properties of a dead letter: the reason (capped), where the original came from, and the
 * original's headers when they are small, else only how large they were. Always far below the
 * 64 KiB amqplib can encode.
 */
export function deadLetterProperties({ msg, reason }: DeadLetter, copyHeaders = true): amqp.Options.Publish {
  const original = (msg.properties.headers ?? {}) as Record<string, unknown>;
  const size = Object.keys(original).length === 0 ? 0 : headersSize(original);
  const copied =
    copyHeaders && size <= MAX_COPIED_HEADERS_BYTES ? original : size > 0 ? { 'x-gqe-headers-dropped-bytes': Number.isFinite(size) ? size : -1 } : {};
  return {
    persistent: true,
    ...(typeof msg.properties.contentType === 'string' ? { contentType: capUtf8(msg.properties.contentType, 255) } : {}),
    headers: {
      ...copied,
      'x-gqe-reason': capUtf8(reason || 'invalid', MAX_REASON_BYTES),
      'x-gqe-routing-key': msg.fields.routingKey,
      'x-gqe-exchange': msg.fields.exchange,
    },
  };
}

/**
 * Puts each message on `<queue>.dead` and waits, at most `timeoutMs`, until the broker confirms
 * them all: only then may the originals be acknowledged. A publish that throws or a confirm that
 * does not come rejects; the channel is then unusable (amqplib may have registered a confirm it
 * will never get), and the caller gives it up without acknowledging anything.
 */
export async function publishDeadLetters(
  channel: amqp.ConfirmChannel,
  queue: string,
  items: readonly DeadLetter[],
  timeoutMs: number,
  copyHeaders: (d: DeadLetter) => boolean = () => true,
): Promise<void> {
  if (items.length === 0) return;
  const dead = deadLetterQueue(queue);
  for (const item of items) channel.sendToQueue(dead, item.msg.content, deadLetterProperties(item, copyHeaders(item)));
  await withTimeout(channel.waitForConfirms(), timeoutMs, `the confirms of ${items.length} dead letters`);
}

export interface QueueSettings {
  exchange: string;
  durableExchange: boolean;
  topic: string;
  queue: string;
  maxLength: number;
  /** x-max-length-bytes of each queue: fat bodies cannot fill the broker's disk. */
  maxBytes: number;
}

/** Where poison and overflow end up: `<queue>.dead`, reached through the default exchange. */
export function deadLetterQueue(queue: string): string {
  return `${queue}.dead`;
}

/**
 * Tries each broker of the transport_url in turn, as oslo.messaging fails over, and returns the
 * first connection. The error lists every broker and why, without a password.
 */
export async function connectBroker(transportUrl: string, caFile: string, log: Logger): Promise<{ connection: amqp.ChannelModel; broker: BrokerAddress }> {
  if (!transportUrl) throw new ConfigError('TRANSPORT_URL: not set; the consumer needs the broker Glance notifies to, e.g. rabbit://user:pass@rabbit:5672/');
  const brokers = parseTransportUrl(transportUrl);
  let ca: Buffer | undefined;
  if (caFile) {
    try {
      ca = readFileSync(caFile);
    } catch (err) {
      throw new ConfigError(`TRANSPORT_CA_FILE: cannot read '${caFile}' (${(err as Error).message})`, { cause: err });
    }
  }
  const failures: string[] = [];
  for (const broker of brokers) {
    try {
      const connection = await amqp.connect({ ...broker, heartbeat: 30, frameMax: 131072 }, { ...(ca ? { ca: [ca] } : {}), timeout: 10_000 });
      log.info({ broker: describeBroker(broker) }, 'connected to the broker');
      return { connection, broker };
    } catch (err) {
      failures.push(`${describeBroker(broker)}: ${(err as Error).message}`);
    }
  }
  throw new BrokerUnavailableError(`no broker of TRANSPORT_URL answered: ${failures.join('; ')}`);
}

export class BrokerUnavailableError extends EnforcerError {
  override readonly code = 'BROKER_UNAVAILABLE';
}

function isPreconditionFailed(err: unknown): boolean {
  return (err as { code?: number }).code === 406 || /PRECONDITION_FAILED/.test((err as Error).message ?? '');
}

/**
 * Glance's exchange as Glance declares it, and our own durable queue bound to `<topic>.info`, with
 * a maximum length and a dead-letter queue so it never grows without bound. Every declaration
 * uses a throwaway channel: a 406 closes the channel, and becomes an error naming the setting.
 */
export async function declareTopology(connection: amqp.ChannelModel, s: QueueSettings): Promise<void> {
  const attempt = async (what: string, fix: string, declare: (ch: amqp.Channel) => Promise<unknown>) => {
    const ch = await connection.createChannel();
    ch.on('error', () => {}); // the rejection below carries the same error
    try {
      await declare(ch);
    } catch (err) {
      if (isPreconditionFailed(err)) throw new ConfigError(`${what} exists with other properties (RabbitMQ 406 PRECONDITION_FAILED): ${fix}`, { cause: err });
      throw err;
    }
    await ch.close().catch(() => {});
  };
  await attempt(
    `NOTIFICATION_EXCHANGE: exchange '${s.exchange}'`,
    `set AMQP_DURABLE_QUEUES=${s.durableExchange ? 'false' : 'true'} to match oslo's amqp_durable_queues in glance-api.conf`,
    (ch) => ch.assertExchange(s.exchange, 'topic', { durable: s.durableExchange, autoDelete: false }),
  );
  const dead = deadLetterQueue(s.queue);
  await attempt(
    `QUEUE_NAME: queue '${dead}'`,
    `it was declared with another QUEUE_MAX_LENGTH or QUEUE_MAX_BYTES (before QUEUE_MAX_BYTES existed: without one); delete it (rabbitmqctl delete_queue ${dead}) after moving its messages, or choose another QUEUE_NAME`,
    (ch) => ch.assertQueue(dead, { durable: true, arguments: { 'x-max-length': s.maxLength, 'x-max-length-bytes': s.maxBytes } }),
  );
  await attempt(
    `QUEUE_NAME: queue '${s.queue}'`,
    `it was declared with another QUEUE_MAX_LENGTH, QUEUE_MAX_BYTES (before QUEUE_MAX_BYTES existed: without one) or dead-letter settings; delete it (rabbitmqctl delete_queue ${s.queue}) or choose another QUEUE_NAME`,
    async (ch) => {
      await ch.assertQueue(s.queue, {
        durable: true,
        arguments: { 'x-max-length': s.maxLength, 'x-max-length-bytes': s.maxBytes, 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dead },
      });
      await ch.bindQueue(s.queue, s.exchange, `${s.topic}.info`);
    },
  );
}

/**
 * Bodies whose dead-lettering once threw, remembered (by digest, boundedly) so that their
 * redelivery is dead-lettered with the reason alone: one message the broker accepted but amqplib
 * cannot send on must not bring the channel down on every redelivery.
 */
export class FailedDeadLetters {
  private readonly digests: LRUCache<string, true>;
  constructor(max = 1024) {
    this.digests = new LRUCache({ max });
  }

  private static digest(content: Uint8Array): string {
    return createHash('sha256').update(content).digest('base64');
  }

  remember(content: Uint8Array): void {
    this.digests.set(FailedDeadLetters.digest(content), true);
  }

  /** Copy the original's headers: false for a body whose dead-lettering threw before. */
  copyHeaders = (d: DeadLetter): boolean => this.digests.size === 0 || !this.digests.has(FailedDeadLetters.digest(d.msg.content));
}
