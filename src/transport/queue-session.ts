import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import { backoffMs } from '../retry.js';
import { BROKER_TIMEOUT_MS, connectBroker, declareTopology, withTimeout, type ChannelModel, type ConfirmChannel, type ConsumeMessage } from './amqp.js';

/** The queue a session consumes and the binding that fills it, for the door's log line. */
export interface QueueBinding {
  queue: string;
  exchange: string;
  routingKey: string;
}

/**
 * A door's hold on Glance's notification queue: a connection to the first broker of TRANSPORT_URL
 * that answers, the queue and binding declared as `consume` declares them, one confirm channel
 * with PREFETCH deliveries unacknowledged at most, and a new connection with backoff whenever that
 * one is lost, until `stop()`. A ConfigError (a 406 on a declaration, a bad TRANSPORT_URL) ends
 * `run()`: retrying cannot fix it.
 *
 * A door extends it with what a delivery becomes and when it is acknowledged: it takes deliveries
 * in `deliver`, acknowledges them on `channel` while that is still the channel in use, drops its
 * copies in `detached`, and settles what is in hand in the `drain` its `stop()` gives `stopAfter`.
 *
 * @example
 *   class Tally extends QueueSession {
 *     private inHand: ConsumeMessage[] = [];
 *     protected deliver(msg: ConsumeMessage) { this.inHand.push(msg); }
 *     protected consuming(binding: QueueBinding) { log.info(binding, 'tallying'); }
 *     protected detached() { this.inHand = []; } // the broker delivers them again
 *     stop() { return this.stopAfter(async () => { for (const m of this.inHand.splice(0)) this.channel?.ack(m); }); }
 *   }
 *   const tally = new Tally(config.amqp, log);
 *   process.once('SIGTERM', () => void tally.stop());
 *   await tally.run();
 */
export abstract class QueueSession {
  private connection: ChannelModel | undefined;
  private channelInUse: ConfirmChannel | undefined;
  private consumerTag: string | undefined;
  private stopRequested = false;
  /** Aborted by stop(): a wait between reconnections ends at once. */
  private readonly stopped = new AbortController();
  private connected: (() => void) | undefined;
  private lost: Promise<void> = Promise.resolve();
  /** Ends the wait on the connection in use, for when its own 'close' never comes. */
  private forget: (() => void) | undefined;

  /**
   * @param timeoutMs the longest wait on the broker (BROKER_TIMEOUT_MS; tests shorten it).
   */
  constructor(
    private readonly amqp: Config['amqp'],
    private readonly log: Logger,
    protected readonly timeoutMs = BROKER_TIMEOUT_MS,
  ) {}

  /** Each delivery of the channel in use, in order. Deliveries of a lost channel never come here. */
  protected abstract deliver(msg: ConsumeMessage): void;

  /** Deliveries flow from now on. */
  protected abstract consuming(binding: QueueBinding): void;

  /** The connection is gone (lost, closed, or never made). */
  protected abstract detached(): void;

  /** A new connection, its topology declared and its channel ready, before the first delivery. */
  protected opening(_connection: ChannelModel): Promise<void> | void {}

  /** The channel deliveries come on now; undefined while disconnected. */
  protected get channel(): ConfirmChannel | undefined {
    return this.channelInUse;
  }

  /** stop() was called: no new connection is made. */
  protected get stopping(): boolean {
    return this.stopRequested;
  }

  get isConnected(): boolean {
    return this.channelInUse !== undefined;
  }

  /** Connects, consumes, and reconnects with backoff until `stop()`. Resolves once stopped. */
  async run(): Promise<void> {
    let attempt = 0;
    while (!this.stopRequested) {
      try {
        // An object, not the promise itself: an async function would wait for a returned promise.
        const { closed } = await this.connect();
        attempt = 0;
        // stop() came while connecting: nothing was received yet, close at once.
        if (this.stopRequested && this.connection) await this.closeQuietly(this.connection);
        await closed;
      } catch (err) {
        if (err instanceof ConfigError) throw err;
        this.log.warn({ err: (err as Error).message }, 'broker connection failed');
      }
      this.detach();
      if (this.stopRequested) break;
      const delay = backoffMs(++attempt, 500, 15_000);
      this.log.info({ retryInMs: delay, attempt }, 'reconnecting to the broker');
      await sleep(delay, undefined, { signal: this.stopped.signal }).catch(() => {});
    }
  }

  /** Resolves when connected (for tests and readiness). */
  whenConnected(): Promise<void> {
    if (this.channelInUse) return Promise.resolve();
    return new Promise((resolve) => (this.connected = resolve));
  }

  private async connect(): Promise<{ closed: Promise<void> }> {
    const { amqp, log } = this;
    const { connection } = await connectBroker(amqp.transportUrl, amqp.caFile, log);
    let closed!: () => void;
    const done = new Promise<void>((resolve) => (closed = resolve));
    connection.on('error', (err: Error) => log.warn({ err: err.message }, 'broker connection error'));
    connection.on('close', () => closed());
    const answer = <T>(promise: Promise<T>, what: string) => withTimeout(promise, this.timeoutMs, what);
    try {
      await answer(declareTopology(connection, amqp), 'the queue declarations');
      const channel = await answer(connection.createConfirmChannel(), 'a new channel');
      channel.on('error', (err: Error) => log.warn({ err: err.message }, 'broker channel error'));
      channel.on('close', () => closed());
      await answer(channel.prefetch(amqp.prefetch), 'basic.qos');
      await this.opening(connection);
      this.connection = connection;
      this.channelInUse = channel;
      this.forget = closed;
      const { consumerTag } = await answer(
        channel.consume(amqp.queue, (msg) => this.receive(channel, msg), { noAck: false }),
        'basic.consume',
      );
      this.consumerTag = consumerTag;
    } catch (err) {
      await this.closeQuietly(connection);
      throw err;
    }
    this.consuming({ queue: amqp.queue, exchange: amqp.exchange, routingKey: `${amqp.topic}.info` });
    this.connected?.();
    this.connected = undefined;
    this.lost = done;
    return { closed: done };
  }

  private detach(): void {
    this.channelInUse = undefined;
    this.connection = undefined;
    this.consumerTag = undefined;
    this.forget = undefined;
    this.detached();
  }

  /** Closes the connection, waiting at most the broker timeout; then drops its socket. */
  private async closeQuietly(connection: ChannelModel): Promise<void> {
    await withTimeout(connection.close(), this.timeoutMs, 'connection.close').catch(() => {
      // Beyond the timeout the broker is not answering: drop the socket, nothing more to say.
      (connection as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
    });
  }

  /**
   * Gives up `channel` after a publish on it threw or a confirm did not come: nothing more is
   * acknowledged on it, the connection is closed (at most the broker timeout, then dropped), and
   * `run()` connects again; the broker delivers every unacknowledged message again.
   */
  protected async abandonChannel(channel: ConfirmChannel): Promise<void> {
    if (channel !== this.channelInUse || !this.connection) return;
    const connection = this.connection;
    const forget = this.forget;
    this.channelInUse = undefined; // from now on no door acknowledges on it
    await this.closeQuietly(connection);
    forget?.();
  }

  private receive(channel: ConfirmChannel, msg: ConsumeMessage | null): void {
    if (!msg) {
      // The broker cancelled us (queue deleted): reconnecting declares it again.
      this.log.warn('consumer cancelled by the broker');
      void this.connection?.close().catch(() => {});
      return;
    }
    if (channel !== this.channelInUse) return;
    this.deliver(msg);
  }

  /**
   * SIGTERM, for the door's `stop()`: stop taking messages, let `drain` settle what is in hand (it
   * may still acknowledge on `channel`), close. Resolves once the connection is closed.
   */
  protected async stopAfter(drain: () => Promise<void>): Promise<void> {
    this.stopRequested = true;
    this.stopped.abort();
    this.connected = undefined;
    const channel = this.channelInUse;
    // Taken now: closing the channel ends the session's wait, and run() forgets the connection.
    const connection = this.connection;
    const forget = this.forget;
    if (channel && this.consumerTag) await withTimeout(channel.cancel(this.consumerTag), this.timeoutMs, 'basic.cancel').catch(() => {});
    await drain();
    // The channel's Close travels behind its last ack; the connection's Close could overtake it
    // and leave the last batch to be redelivered.
    if (this.channelInUse) await withTimeout(this.channelInUse.close(), this.timeoutMs, 'channel.close').catch(() => {});
    if (connection) await this.closeQuietly(connection);
    forget?.();
    await this.lost;
  }
}
