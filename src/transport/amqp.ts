import { readFileSync } from 'node:fs';
import amqp from 'amqplib';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import { describeBroker, parseTransportUrl, type BrokerAddress } from './transport-url.js';

export type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib';

export interface QueueSettings {
  exchange: string;
  durableExchange: boolean;
  topic: string;
  queue: string;
  maxLength: number;
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
      throw new ConfigError(`TRANSPORT_CA_FILE: cannot read '${caFile}' (${(err as Error).message})`);
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

export class BrokerUnavailableError extends Error {
  override name = 'BrokerUnavailableError';
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
      if (isPreconditionFailed(err)) throw new ConfigError(`${what} exists with other properties (RabbitMQ 406 PRECONDITION_FAILED): ${fix}`);
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
    `it was declared with another QUEUE_MAX_LENGTH; delete it (rabbitmqctl delete_queue ${dead}) after moving its messages, or choose another QUEUE_NAME`,
    (ch) => ch.assertQueue(dead, { durable: true, arguments: { 'x-max-length': s.maxLength } }),
  );
  await attempt(
    `QUEUE_NAME: queue '${s.queue}'`,
    `it was declared with another QUEUE_MAX_LENGTH or dead-letter settings; delete it (rabbitmqctl delete_queue ${s.queue}) or choose another QUEUE_NAME`,
    async (ch) => {
      await ch.assertQueue(s.queue, {
        durable: true,
        arguments: { 'x-max-length': s.maxLength, 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dead },
      });
      await ch.bindQueue(s.queue, s.exchange, `${s.topic}.info`);
    },
  );
}
