import { setTimeout as sleep } from 'node:timers/promises';
import { SendMessageBatchCommand, type SQSClient } from '@aws-sdk/client-sqs';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { backoffMs } from '../retry.js';
import { publishDeadLetters, type ConfirmChannel, type ConsumeMessage, type DeadLetter } from '../transport/amqp.js';
import { QueueSession, type QueueBinding } from '../transport/queue-session.js';

/** SQS's limit on one message, and on the sum of one SendMessageBatch's bodies. */
export const SQS_MAX_MESSAGE_BYTES = 256 * 1024;
/** SQS's limit on the entries of one SendMessageBatch. */
export const SQS_MAX_BATCH_ENTRIES = 10;

/**
 * What SQS accepts in a message body: XML's characters (#x9 | #xA | #xD | #x20-#xD7FF |
 * #xE000-#xFFFD | #x10000-#x10FFFF). Anything else is refused, so it is found before sending.
 */
const NOT_FOR_SQS = /[^\x09\x0A\x0D\x20-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/u;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** `https://sqs.eu-west-1.amazonaws.com/123456789012/q` -> `eu-west-1` (also `.amazonaws.com.cn`). */
export function regionOfQueueUrl(queueUrl: string): string | undefined {
  return /^https?:\/\/sqs[.-]([a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com(?:\.cn)?\//.exec(queueUrl)?.[1];
}

/**
 * The body as SQS will carry it, or why it cannot: the bridge forwards bodies unchanged, so one
 * that SQS would alter or refuse goes to the dead-letter queue instead.
 */
export function sqsBody(content: Uint8Array): { body: string } | { reason: string } {
  if (content.length > SQS_MAX_MESSAGE_BYTES) {
    return { reason: `body of ${content.length} bytes is over SQS's limit of ${SQS_MAX_MESSAGE_BYTES} bytes per message` };
  }
  let body: string;
  try {
    body = utf8.decode(content);
  } catch {
    return { reason: 'body is not UTF-8 text; SQS carries text only, and the bridge forwards bodies unchanged' };
  }
  if (body === '') return { reason: 'body is empty; SQS refuses empty messages' };
  const bad = NOT_FOR_SQS.exec(body);
  if (bad)
    return {
      reason: `body has U+${bad[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')} at character ${bad.index}, which SQS refuses in a message`,
    };
  return { body };
}

export interface BridgeOptions {
  /** TRANSPORT_URL and the queue settings: the same queue, binding and dead-letter queue as `consume`. */
  config: Config;
  sqs: SQSClient;
  /** SQS_QUEUE_URL. */
  queueUrl: string;
  log: Logger;
  /** SendMessageBatch requests in flight at once (each up to 10 messages). */
  concurrency?: number;
  /** First delay of the retries of failed entries, doubling up to 30 s (tests shorten it). */
  retryBaseMs?: number;
  /** On stop(): how long sends in flight may go on before the connection is closed anyway. */
  drainTimeoutMs?: number;
}

export interface BridgeCounters {
  /** Messages SQS accepted and that were then acknowledged. */
  forwarded: number;
  /** Messages put on the RabbitMQ dead-letter queue (too large, not text, refused by SQS). */
  deadLettered: number;
  /** Entries sent again after SQS failed them or the request failed. */
  retried: number;
}

interface Entry {
  id: string;
  body: string;
  msg: ConsumeMessage;
}

/**
 * `glance-quota-enforcer bridge`: Glance's notifications from RabbitMQ (on premises) to an SQS
 * queue (in AWS) whose function runs the pipeline. It consumes the same queue as `consume`, with
 * the same declarations, and forwards each body unchanged with SendMessageBatch.
 *
 * A delivery is acknowledged only after SQS accepted it. Entries SQS failed (SenderFault false:
 * throttling, an internal error) and whole requests that failed are sent again with backoff, only
 * those entries, until accepted; nothing is acknowledged meanwhile. If the connection drops first,
 * the broker delivers them again. Either way a body may reach SQS twice, and the ledger, which
 * knows every Glance message id, counts it once. A body SQS cannot carry unchanged (over 256 KiB,
 * not UTF-8, characters SQS refuses) or an entry SQS refused for good (SenderFault true) goes to
 * the RabbitMQ dead-letter queue `<QUEUE_NAME>.dead` with the reason in the header `x-gqe-reason`,
 * confirmed by the broker, and only then is acknowledged.
 *
 * @example
 *   const bridge = new SqsBridge({ config, sqs: new SQSClient({ region: 'eu-west-1' }), queueUrl, log });
 *   process.once('SIGTERM', () => void bridge.stop());
 *   await bridge.run();
 */
export class SqsBridge extends QueueSession {
  readonly counters: BridgeCounters = { forwarded: 0, deadLettered: 0, retried: 0 };
  private pending: ConsumeMessage[] = [];
  private readonly sending = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  /** Aborted when the connection in use is lost or closed: its sends and waits stop at once. */
  private abort = new AbortController();
  private readonly concurrency: number;
  private readonly retryBaseMs: number;
  private readonly drainTimeoutMs: number;

  constructor(private readonly options: BridgeOptions) {
    super(options.config.amqp, options.log);
    this.concurrency = options.concurrency ?? 4;
    this.retryBaseMs = options.retryBaseMs ?? 200;
    this.drainTimeoutMs = options.drainTimeoutMs ?? 20_000;
  }

  protected override opening(): void {
    this.abort = new AbortController();
  }

  protected deliver(msg: ConsumeMessage): void {
    this.pending.push(msg);
    this.schedule();
  }

  protected consuming(binding: QueueBinding): void {
    this.options.log.info({ ...binding, sqsQueue: this.options.queueUrl }, 'bridging to SQS');
  }

  protected detached(): void {
    // Unacked deliveries of a lost channel come back from the broker: drop our copies, and stop
    // the sends and retries that would acknowledge them on the dead channel.
    this.abort.abort();
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pending = [];
  }

  private schedule(): void {
    if (this.pending.length >= SQS_MAX_BATCH_ENTRIES) this.dispatch();
    // A few milliseconds of patience turn a trickle into batches of 10: a tenth of the requests.
    else this.timer ??= setTimeout(() => this.dispatch(), 5);
  }

  private dispatch(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const channel = this.channel;
    while (channel && this.sending.size < this.concurrency && this.pending.length > 0) {
      const batch = this.takeBatch();
      const sent: Promise<void> = this.forward(channel, batch, this.abort.signal)
        .catch((err: Error) => {
          if (!this.abort.signal.aborted)
            this.options.log.error({ err: err.message, messages: batch.length }, 'batch not forwarded; the broker will deliver it again');
        })
        .finally(() => {
          this.sending.delete(sent);
          if (this.pending.length > 0) this.schedule();
        });
      this.sending.add(sent);
    }
  }

  /** Up to 10 deliveries whose bodies add up to at most 256 KiB (SQS's limits on one request). */
  private takeBatch(): ConsumeMessage[] {
    const batch: ConsumeMessage[] = [];
    let bytes = 0;
    while (this.pending.length > 0 && batch.length < SQS_MAX_BATCH_ENTRIES) {
      const size = this.pending[0]!.content.length;
      // A body too large for SQS is not sent at all, so it takes no room in the request.
      const counted = size > SQS_MAX_MESSAGE_BYTES ? 0 : size;
      if (batch.length > 0 && bytes + counted > SQS_MAX_MESSAGE_BYTES) break;
      bytes += counted;
      batch.push(this.pending.shift()!);
    }
    return batch;
  }

  private async forward(channel: ConfirmChannel, batch: ConsumeMessage[], signal: AbortSignal): Promise<void> {
    const { log, sqs, queueUrl } = this.options;
    const dead: { msg: ConsumeMessage; reason: string }[] = [];
    let todo: Entry[] = [];
    batch.forEach((msg, i) => {
      const prepared = sqsBody(msg.content);
      if ('reason' in prepared) dead.push({ msg, reason: prepared.reason });
      else todo.push({ id: `m${i}`, body: prepared.body, msg });
    });
    if (dead.length > 0) await this.deadLetter(channel, dead);

    for (let attempt = 1; todo.length > 0; attempt++) {
      if (signal.aborted) return; // connection lost: nothing more is acknowledged, all comes back
      const retry: Entry[] = [];
      const refused: { msg: ConsumeMessage; reason: string }[] = [];
      try {
        const out = await sqs.send(new SendMessageBatchCommand({ QueueUrl: queueUrl, Entries: todo.map((e) => ({ Id: e.id, MessageBody: e.body })) }), {
          abortSignal: signal,
        });
        const open = new Map(todo.map((e) => [e.id, e]));
        for (const s of out.Successful ?? []) {
          const e = s.Id === undefined ? undefined : open.get(s.Id);
          if (!e) continue;
          open.delete(e.id);
          if (!this.ack(channel, e.msg)) return;
          this.counters.forwarded++;
        }
        for (const f of out.Failed ?? []) {
          const e = f.Id === undefined ? undefined : open.get(f.Id);
          if (!e) continue;
          open.delete(e.id);
          if (f.SenderFault) refused.push({ msg: e.msg, reason: `SQS refused the message: ${f.Code ?? 'error'}: ${f.Message ?? ''}`.trim() });
          else retry.push(e);
        }
        // An entry SQS reported neither way was not accepted as far as anyone can tell.
        retry.push(...open.values());
        if (retry.length > 0)
          log.warn(
            { failed: retry.length, of: todo.length, codes: [...new Set((out.Failed ?? []).map((f) => f.Code))] },
            'SQS failed part of a batch; sending those again',
          );
      } catch (err) {
        if (signal.aborted) return;
        retry.push(...todo);
        log.warn(
          { err: (err as Error).message, kind: (err as Error).name, entries: todo.length, attempt },
          'SendMessageBatch failed; sending the batch again, nothing acknowledged',
        );
      }
      if (refused.length > 0) await this.deadLetter(channel, refused);
      todo = retry;
      if (todo.length > 0) {
        this.counters.retried += todo.length;
        await sleep(backoffMs(attempt, this.retryBaseMs, 30_000), undefined, { signal }).catch(() => {});
      }
    }
  }

  /** false when the channel is gone: the broker delivers the message again. */
  private ack(channel: ConfirmChannel, msg: ConsumeMessage): boolean {
    if (channel !== this.channel) return false;
    try {
      channel.ack(msg);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * To `<queue>.dead` with the reason, confirmed by the broker before the originals are acked. A
   * publish that throws or a confirm that does not come gives the channel up, nothing acked: the
   * broker delivers the messages again on the next connection.
   */
  private async deadLetter(channel: ConfirmChannel, items: DeadLetter[]): Promise<void> {
    for (const { msg, reason } of items) {
      this.options.log.warn({ reason, routingKey: msg.fields.routingKey, bytes: msg.content.length }, 'notification dead-lettered instead of forwarded');
    }
    try {
      await publishDeadLetters(channel, this.options.config.amqp.queue, items, this.timeoutMs);
    } catch (err) {
      this.options.log.error({ err: (err as Error).message, deadLetters: items.length }, 'dead-lettering failed; reconnecting, the messages come back');
      await this.abandonChannel(channel);
      throw err;
    }
    for (const { msg } of items) if (this.ack(channel, msg)) this.counters.deadLettered++;
  }

  /**
   * SIGTERM: stop taking messages, forward and acknowledge what is in hand, close. Sends still
   * failing after `drainTimeoutMs` are abandoned unacknowledged: the broker keeps those messages.
   */
  stop(drainTimeoutMs = this.drainTimeoutMs): Promise<void> {
    return this.stopAfter(async () => {
      const deadline = Date.now() + drainTimeoutMs;
      while (this.channel && (this.pending.length > 0 || this.sending.size > 0) && Date.now() < deadline) {
        this.dispatch();
        const left = deadline - Date.now();
        if (this.sending.size === 0 || left <= 0) break;
        const patience = new AbortController();
        await Promise.race([Promise.race(this.sending), sleep(left, undefined, { signal: patience.signal }).catch(() => {})]);
        patience.abort();
      }
      this.abort.abort();
    });
  }
}
