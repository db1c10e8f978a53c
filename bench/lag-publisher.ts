/**
 * The lag section's publisher in a process of its own, as Glance publishes from its own: it
 * publishes `count` realistic notifications at `rate` msg/s on `exchange` with `routingKey`, each
 * stamped with the time it is sent, then exits. Run by bench/consume.ts (`--lag-publisher
 * process`, the default); in the consumer's own process, a commit that held the event loop also
 * held the publisher, which then sent the messages it owed in a burst.
 *
 *   GQE_LAG_PUBLISHER='{"broker":{...},"exchange":"x","routingKey":"q.info","rate":9000,"count":20000,"projects":1000,"seed":11}' \
 *     node --import tsx bench/lag-publisher.ts
 *
 * The arguments come in the environment, not argv, where `ps` would show the broker's password.
 */
import amqp from 'amqplib';
import { generateHistory, osloTimestamp } from '../test/support/generate.js';

export interface PublisherArgs {
  /** What amqplib's connect takes: a URL, or the broker address parseTransportUrl gives. */
  broker: string | amqp.Options.Connect;
  exchange: string;
  routingKey: string;
  rate: number;
  count: number;
  projects: number;
  seed: number;
}

/** Re-stamp a body with the current time, as Glance stamps a notification when it sends it. */
export function stamp(body: string, nowMs: number): string {
  return body.replace(/\\"timestamp\\": \\"[^\\]*\\"/, `\\"timestamp\\": \\"${osloTimestamp(nowMs * 1000)}\\"`);
}

/** Publishes `bodies` at `rate` msg/s, each stamped when sent, confirming every 1000. */
export async function publishAtRate(
  channel: amqp.ConfirmChannel,
  exchange: string,
  routingKey: string,
  bodies: readonly string[],
  rate: number,
): Promise<void> {
  const t0 = performance.now();
  for (let i = 0; i < bodies.length; i++) {
    const due = t0 + (i / rate) * 1000;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    channel.publish(exchange, routingKey, Buffer.from(stamp(bodies[i]!, Date.now())), { contentType: 'application/json', deliveryMode: 2 });
    if (i % 1000 === 999) await channel.waitForConfirms();
  }
  await channel.waitForConfirms();
}

async function main(): Promise<void> {
  const a = JSON.parse(process.env.GQE_LAG_PUBLISHER ?? '') as PublisherArgs;
  const bodies = generateHistory({ seed: a.seed, projects: a.projects, messages: a.count }).bodies;
  const connection = await amqp.connect(a.broker);
  try {
    const channel = await connection.createConfirmChannel();
    await publishAtRate(channel, a.exchange, a.routingKey, bodies, a.rate);
  } finally {
    await connection.close();
  }
}

if (process.argv[1]?.endsWith('lag-publisher.ts')) {
  main().catch((err: unknown) => {
    console.error(`lag-publisher: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  });
}
