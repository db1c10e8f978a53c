import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from './config.js';
import type { EnforcementReport, IngestResult, Pipeline } from './enforcer.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import { deadLetterQueue, type ChannelModel, type ConfirmChannel, type ConsumeMessage } from './transport/amqp.js';
import { QueueSession, type QueueBinding } from './transport/queue-session.js';

/** Full-jitter exponential backoff, capped: retries of many processes do not march in step. */
export function backoffMs(attempt: number, baseMs = 200, maxMs = 30_000): number {
  return Math.floor(Math.random() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20)));
}

/**
 * Projects whose ledger changed wait here for a decision, one at a time, each at most once in the
 * queue however many messages touched it. Enforcement runs beside counting: a slow Glance delays
 * deletions, never the ledger. A project whose enforcement failed (Glance or Keystone down) comes
 * back after a backoff; one left undone at a crash is found again by the reconcile at start.
 */
export class EnforcementWorker {
  private readonly pending = new Set<string>();
  private readonly failures = new Map<string, number>();
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly pipeline: Pipeline,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly onReport?: (report: EnforcementReport) => void | Promise<void>,
  ) {}

  add(projects: Iterable<string>): void {
    for (const p of projects) this.pending.add(p);
    this.metrics.pendingProjects.set(this.pending.size);
    if (!this.running && !this.stopped) this.running = this.loop().finally(() => (this.running = undefined));
  }

  private async loop(): Promise<void> {
    while (this.pending.size > 0 && !this.stopped) {
      const projectId = this.pending.values().next().value as string;
      this.pending.delete(projectId);
      this.metrics.pendingProjects.set(this.pending.size);
      try {
        const report = await this.pipeline.enforce(projectId);
        this.failures.delete(projectId);
        await this.onReport?.(report);
      } catch (err) {
        this.metrics.countOpenStackError(err);
        const attempt = (this.failures.get(projectId) ?? 0) + 1;
        this.failures.set(projectId, attempt);
        const delay = backoffMs(attempt, 1_000, 60_000);
        this.log.warn({ projectId, attempt, retryInMs: delay, err: (err as Error).message }, 'enforcement failed; will retry');
        setTimeout(() => this.add([projectId]), delay).unref();
      }
    }
  }

  /** Finish the project in hand, leave the rest (the next start's reconcile finds them). */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  get idle(): boolean {
    return !this.running && this.pending.size === 0;
  }
}

export interface ConsumerOptions {
  config: Config;
  pipeline: Pipeline;
  log: Logger;
  metrics: Metrics;
  /** Called after every committed batch with the projects it touched. */
  onCommitted?: (result: IngestResult) => void;
  /** Called with each new connection, e.g. to publish notifications on it. */
  onConnected?: (connection: ChannelModel) => Promise<void>;
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

  constructor(private readonly o: ConsumerOptions) {
    super(o.config.amqp, o.log, backoffMs);
  }

  protected override async opening(connection: ChannelModel): Promise<void> {
    await this.o.onConnected?.(connection);
  }

  protected deliver(msg: ConsumeMessage): void {
    this.buffer.push(msg);
    this.schedule();
  }

  protected consuming(binding: QueueBinding): void {
    this.o.metrics.brokerConnected.set(1);
    this.o.log.info(binding, 'consuming');
  }

  protected detached(): void {
    this.o.metrics.brokerConnected.set(0);
    // Unacked deliveries of a lost channel come back from the broker: drop our copies.
    this.buffer = [];
  }

  private schedule(): void {
    if (this.flushing) return;
    if (this.buffer.length >= this.o.config.amqp.prefetch) {
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
    const batch = this.buffer.splice(0, this.o.config.amqp.prefetch);
    this.flushing = this.flush(channel, batch)
      .catch((err: Error) => this.o.log.error({ err: err.message }, 'batch not acknowledged; the broker will redeliver it'))
      .finally(() => {
        this.flushing = undefined;
        if (this.buffer.length > 0) this.schedule();
      });
  }

  private async flush(channel: ConfirmChannel, batch: ConsumeMessage[]): Promise<void> {
    const { pipeline, metrics, log, config } = this.o;
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
    const dead = deadLetterQueue(config.amqp.queue);
    const now = Date.now();
    result.outcomes.forEach((o, i) => {
      metrics.messages.inc({ result: o.result });
      const msg = batch[i]!;
      if (o.result === 'invalid') {
        log.warn({ reason: o.reason, routingKey: msg.fields.routingKey, bytes: msg.content.length }, 'invalid notification dead-lettered');
        channel.sendToQueue(dead, msg.content, {
          persistent: true,
          contentType: msg.properties.contentType,
          headers: { ...msg.properties.headers, 'x-gqe-reason': o.reason ?? 'invalid', 'x-gqe-routing-key': msg.fields.routingKey, 'x-gqe-exchange': msg.fields.exchange },
        });
      } else if (o.event) {
        metrics.lag.observe(Math.max(0, now / 1000 - o.event.timestamp / 1e6));
      }
    });
    // The dead letters must be safe before their originals are acknowledged.
    await channel.waitForConfirms();
    if (channel !== this.channel) return;
    channel.ack(batch[batch.length - 1]!, true);
    this.o.onCommitted?.(result);
  }

  /** SIGTERM: stop taking messages, commit and ack what is in hand, close. */
  stop(): Promise<void> {
    return this.stopAfter(async () => {
      // Deliveries already received are committed and acknowledged before closing.
      while (this.flushing || (this.buffer.length > 0 && this.channel)) {
        if (!this.flushing) this.flushNow();
        await this.flushing;
      }
    });
  }
}
