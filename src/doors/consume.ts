import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config.js';
import type { IngestResult, Pipeline } from '../pipeline/index.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { backoffMs, settlesWithin } from '../retry.js';
import { FailedDeadLetters, publishDeadLetters, type ChannelModel, type ConfirmChannel, type ConsumeMessage, type DeadLetter } from '../transport/amqp.js';
import { QueueSession, type QueueBinding } from '../transport/queue-session.js';

export interface ConsumerOptions {
  config: Config;
  pipeline: Pipeline;
  log: Logger;
  metrics: Metrics;
  /** Called after every committed batch with the projects it touched. */
  onCommitted?: (result: IngestResult) => void;
  /** Called with each new connection, e.g. to publish notifications on it. */
  onConnected?: (connection: ChannelModel) => Promise<void>;
  /** The longest wait on the broker (BROKER_TIMEOUT_MS); tests shorten it. */
  brokerTimeoutMs?: number;
}

/**
 * The consume door: RabbitMQ deliveries in, batches through the pipeline, acks out. A message is
 * acknowledged only after its batch is committed to the store; poison goes to the dead-letter queue
 * with its reason first. At-least-once end to end: a redelivery is a duplicate and changes nothing.
 */
export class NotificationConsumer extends QueueSession {
  private buffer: ConsumeMessage[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  /** Date.now() when the batch in hand was taken; undefined while none is. */
  private batchTakenAt: number | undefined;
  private readonly failedDeadLetters = new FailedDeadLetters();

  constructor(private readonly options: ConsumerOptions) {
    super(options.config.amqp, options.log, options.brokerTimeoutMs);
  }

  /**
   * How long the batch in hand has been neither acknowledged nor given back (0 when none is):
   * `/readyz` fails past STALL_SECONDS, so that a consumer stuck on the broker or the store is
   * seen, and restarted, instead of looking healthy.
   */
  batchHeldMs(now = Date.now()): number {
    return this.batchTakenAt === undefined ? 0 : now - this.batchTakenAt;
  }

  protected override async opening(connection: ChannelModel): Promise<void> {
    await this.options.onConnected?.(connection);
  }

  protected deliver(msg: ConsumeMessage): void {
    this.buffer.push(msg);
    this.schedule();
  }

  protected consuming(binding: QueueBinding): void {
    this.options.metrics.brokerConnected.set(1);
    this.options.log.info(binding, 'consuming');
  }

  protected detached(): void {
    this.options.metrics.brokerConnected.set(0);
    // Unacked deliveries of a lost channel come back from the broker: drop our copies.
    this.buffer = [];
  }

  /**
   * The largest batch committed in one store write: a quarter of the PREFETCH window, so that
   * while one batch is committed the broker goes on sending the next three. What keeps the broker
   * busy is the depth of the window, not the size of a batch (bench/README.md, "Why the code is as
   * it is"). A window of only two batches is close to stop-and-wait: the broker waits on every
   * commit, the consumer on every ack. Under a backlog, batches fill to this; a trickle is
   * committed after at most 5 ms.
   */
  private get maxBatch(): number {
    return Math.max(1, Math.floor(this.options.config.amqp.prefetch / 4));
  }

  private schedule(): void {
    if (this.flushing) return;
    if (this.buffer.length >= this.maxBatch) {
      this.flushNow();
    } else {
      // A few milliseconds of patience turn a trickle into batches: one transaction for many messages.
      this.timer ??= setTimeout(() => this.flushNow(), 5);
    }
  }

  private flushNow(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.flushing || this.buffer.length === 0 || !this.channel) return;
    const channel = this.channel;
    const batch = this.buffer.splice(0, this.maxBatch);
    this.batchTakenAt = Date.now();
    this.flushing = this.flush(channel, batch)
      .catch((err: Error) => this.options.log.error({ err: err.message }, 'batch not acknowledged; the broker will redeliver it'))
      .finally(() => {
        this.flushing = undefined;
        this.batchTakenAt = undefined;
        if (this.buffer.length > 0) this.schedule();
      });
  }

  private async flush(channel: ConfirmChannel, batch: ConsumeMessage[]): Promise<void> {
    const { pipeline, metrics, log, config } = this.options;
    let result: IngestResult | undefined;
    for (let attempt = 1; !result; attempt++) {
      if (channel !== this.channel) return; // connection lost: nothing was acked, all comes back
      try {
        result = await pipeline.ingest(batch.map((m) => m.content));
      } catch (err) {
        metrics.storeErrors.inc();
        const delay = backoffMs(attempt, 200, 10_000);
        log.warn({ attempt, retryInMs: delay, messages: batch.length, err: (err as Error).message }, 'store write failed; retrying, nothing acknowledged');
        if (this.stopping && attempt >= 3) return; // shutting down: leave the batch to the broker
        await sleep(delay);
      }
    }
    const now = Date.now();
    const dead: DeadLetter[] = [];
    const counts = { applied: 0, duplicate: 0, ignored: 0, invalid: 0 };
    result.outcomes.forEach((o, i) => {
      counts[o.result]++;
      const msg = batch[i]!;
      if (o.result === 'invalid') {
        log.warn({ reason: o.reason, routingKey: msg.fields.routingKey, bytes: msg.content.length }, 'invalid notification dead-lettered');
        dead.push({ msg, reason: o.reason ?? 'invalid' });
      } else if (o.event) {
        metrics.lag.observe(Math.max(0, now / 1000 - o.event.timestamp / 1e6));
      }
    });
    for (const [kind, n] of Object.entries(counts)) if (n > 0) metrics.messages.inc({ result: kind }, n);
    // The dead letters must be safe before their originals are acknowledged.
    try {
      await publishDeadLetters(channel, config.amqp.queue, dead, this.timeoutMs, this.failedDeadLetters.copyHeaders);
    } catch (err) {
      // Nothing is acknowledged: the channel is given up, the broker delivers the batch again
      // (its valid messages are duplicates then), and these bodies go without their headers.
      for (const d of dead) this.failedDeadLetters.remember(d.msg.content);
      log.error({ err: (err as Error).message, deadLetters: dead.length }, 'dead-lettering failed; reconnecting, the batch comes back');
      await this.abandonChannel(channel);
      return;
    }
    if (channel !== this.channel) return;
    try {
      channel.ack(batch[batch.length - 1]!, true);
    } catch (err) {
      // The channel closed under us: the broker delivers the batch again, all duplicates.
      log.warn({ err: (err as Error).message }, 'acknowledgement failed; the batch comes back as duplicates');
      return;
    }
    this.options.onCommitted?.(result);
  }

  /**
   * SIGTERM: stop taking messages, commit and ack what is in hand, close. What is still not
   * settled after `drainMs` (a store or broker that does not answer) is left unacknowledged: the
   * broker delivers it again to the next consumer.
   */
  stop(drainMs = this.options.config.shutdownMs): Promise<void> {
    return this.stopAfter(async () => {
      const deadline = Date.now() + drainMs;
      // Deliveries already received are committed and acknowledged before closing.
      while (this.flushing || (this.buffer.length > 0 && this.channel)) {
        if (!this.flushing) this.flushNow();
        if (!(await settlesWithin(this.flushing, deadline - Date.now()))) {
          this.options.log.warn({ drainMs, inHand: this.buffer.length }, 'batch in hand not settled in time; left to the broker');
          this.buffer = [];
          return;
        }
      }
    });
  }
}
