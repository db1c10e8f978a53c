import { parseArgs } from 'node:util';
import { SQSClient } from '@aws-sdk/client-sqs';
import { openConfig } from '../composition-root.js';
import { ConfigError } from '../errors.js';
import { regionOfQueueUrl, SqsBridge } from '../doors/sqs-bridge.js';

/**
 * `glance-quota-enforcer bridge`: for a cloud whose RabbitMQ is on premises while the enforcer
 * runs as functions in AWS. Consumes Glance's notifications exactly as `consume` would (TRANSPORT_URL,
 * QUEUE_NAME, ...) and forwards each body unchanged to SQS_QUEUE_URL, whose `sqs` function runs
 * the pipeline. AWS credentials come from the SDK's usual chain (environment, AWS_PROFILE,
 * instance or container role); the region from AWS_REGION, else from the queue's URL.
 * SIGTERM forwards what is in hand, acknowledges it and exits 0.
 *
 * @example
 *   SQS_QUEUE_URL=https://sqs.eu-west-1.amazonaws.com/123456789012/glance-quota-enforcer-prod-notifications \
 *   TRANSPORT_URL=rabbit://gqe:secret@rabbit1:5672/ glance-quota-enforcer bridge
 */
export async function bridge(args: string[]): Promise<number> {
  parseArgs({ args, options: {} });
  const { config, log } = openConfig(process.env);
  const queueUrl = config.sqs.queueUrl;
  if (!queueUrl) {
    throw new ConfigError(
      "SQS_QUEUE_URL: not set; `bridge` forwards Glance's notifications to this SQS queue, the NotificationsQueueUrl output of `serverless deploy` (docs/serverless.md), e.g. SQS_QUEUE_URL=https://sqs.eu-west-1.amazonaws.com/123456789012/glance-quota-enforcer-prod-notifications",
    );
  }
  const region = process.env.AWS_REGION?.trim() || process.env.AWS_DEFAULT_REGION?.trim() || regionOfQueueUrl(queueUrl);
  if (!region) throw new ConfigError(`AWS_REGION: not set, and SQS_QUEUE_URL '${queueUrl}' names no region; set AWS_REGION=eu-west-1 (the queue's region)`);
  const sqs = new SQSClient({ region, requestHandler: { connectionTimeout: 5_000, requestTimeout: 30_000 } });
  const bridge = new SqsBridge({ config, sqs, queueUrl, log });

  let stopping: Promise<void> | undefined;
  const stop = (signal: string) => {
    stopping ??= (async () => {
      log.info({ signal }, 'stopping: forwarding the messages in hand');
      await bridge.stop();
      sqs.destroy();
      log.info(bridge.counters, 'stopped');
    })();
    return stopping;
  };
  const onSignal = (sig: NodeJS.Signals) => void stop(sig);
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    await bridge.run();
  } catch (err) {
    // A configuration error (406 on the exchange, a bad TRANSPORT_URL): nothing to retry.
    await stop('error');
    throw err;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
  await stopping;
  return 0;
}
