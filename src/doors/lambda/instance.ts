import type { SQSClient } from '@aws-sdk/client-sqs';
import type { Config } from '../../config.js';
import type { ImageService, Pipeline } from '../../pipeline/index.js';
import { ConfigError, errorCode } from '../../errors.js';
import { createLogger, logContext, type Logger } from '../../log.js';
import type { InvocationContext } from './events.js';
import { stdoutMetrics, type MetricsSink } from './metrics.js';
import type { LimitSource } from '../../quota/limits.js';
import { openRuntime } from '../../composition-root.js';
import { storeScheme } from '../../store/index.js';
import { awsSecretReader, resolveSecrets, type SecretReader } from './secrets.js';

/**
 * Where the `sqs` function sets a poison record aside: the stack's dead-letter queue, with the
 * reason beside the unchanged body (as `consume` puts `x-gqe-reason` on its dead letters).
 */
export interface PoisonQueue {
  readonly description: string;
  send(body: string, reason: string, sourceMessageId: string): Promise<void>;
}

/** What a function instance builds once, at its cold start, and reuses for every invocation. */
export interface FunctionServices {
  config: Config;
  log: Logger;
  /** Acts on Glance itself: the function door needs no Glance of its own. */
  pipeline: Pipeline;
  /** Unset (no SQS_DEAD_LETTER_QUEUE_URL): poison is reported as failed, and redrive moves it. */
  poison?: PoisonQueue;
  /** Where each invocation's metrics go (CloudWatch EMF on stdout); unset, none are written. */
  metrics?: MetricsSink;
  close(): Promise<void>;
}

const SHARED = 'postgres://user:pass@host:5432/db or redis://[:pass@]host:6379[/db]';

/**
 * Function mode refuses a ledger that is not shared. Every concurrent function instance (and
 * every cold start) would otherwise count into a ledger of its own: each would see only part of
 * a project's images, and a project far over its quota would look under it everywhere.
 */
export function requireSharedStore(storeUrl: string): void {
  const scheme = storeScheme(storeUrl);
  if (scheme === 'sqlite' || scheme === 'memory') {
    throw new ConfigError(
      `STORE_URL: a function needs a ledger that all its instances share, ${SHARED}; got ${scheme}://, which would give every Lambda instance a ledger of its own that counts only the images it happened to see (set STORE_URL_SECRET_ARN, or STORE_URL)`,
    );
  }
}

/** What the tests of the bundles and of the cold start put in place of AWS and OpenStack. */
export interface FunctionServicesOptions {
  /** Instead of Keystone and Glance reached with the OS_* identity. */
  openstack?: { glance: ImageService; limits: LimitSource };
  /** Instead of the instance's AWS Secrets Manager / SSM reader. */
  secrets?: SecretReader;
  /** Instead of EMF lines on stdout. */
  metrics?: MetricsSink;
}

/** The secrets this instance has read (AWS Secrets Manager / SSM), kept for its life. */
const instanceSecrets = awsSecretReader();

/**
 * Builds the services of one function instance from its environment: the secrets named by
 * `<SETTING>_SECRET_ARN` read (src/doors/lambda/secrets.ts), then the same configuration, store,
 * Keystone limits, Glance client and pipeline as `consume` (src/composition-root.ts), with a shared store
 * required, and the SQS client for poison only when SQS_DEAD_LETTER_QUEUE_URL is set.
 */
export async function openFunctionServices(given: NodeJS.ProcessEnv = process.env, options: FunctionServicesOptions = {}): Promise<FunctionServices> {
  const { openstack, secrets = instanceSecrets, metrics = stdoutMetrics } = options;
  const env = await resolveSecrets(given, secrets);
  const runtime = await openRuntime(env, {
    needGlance: true,
    check: (config) => requireSharedStore(config.storeUrl),
    ...(openstack ? { overrides: openstack } : {}),
  });
  const { config, log, pipeline } = runtime;
  let poison: PoisonQueue | undefined;
  let sqs: SQSClient | undefined;
  if (config.sqs.deadLetterQueueUrl) {
    // Loaded only here: the amazonmq and reconcile functions never pay for the SDK.
    const [{ SQSClient }, { regionOfQueueUrl }] = await Promise.all([import('@aws-sdk/client-sqs'), import('../sqs-bridge.js')]);
    sqs = new SQSClient({ region: env.AWS_REGION || regionOfQueueUrl(config.sqs.deadLetterQueueUrl) });
    poison = sqsPoisonQueue(sqs, config.sqs.deadLetterQueueUrl);
  }
  log.info({ store: pipeline.ledger.description, mode: pipeline.mode, poison: poison?.description ?? 'reported for redrive' }, 'function instance ready');
  return {
    config,
    log,
    pipeline,
    metrics,
    ...(poison ? { poison } : {}),
    close: async () => {
      sqs?.destroy();
      await runtime.close();
    },
  };
}

/** SendMessage of the unchanged body, with the reason and the original message id as attributes. */
export function sqsPoisonQueue(sqs: SQSClient, queueUrl: string): PoisonQueue {
  return {
    description: queueUrl,
    async send(body, reason, sourceMessageId) {
      const { SendMessageCommand } = await import('@aws-sdk/client-sqs');
      await sqs.send(
        new SendMessageCommand({
          QueueUrl: queueUrl,
          MessageBody: body,
          MessageAttributes: {
            'gqe-reason': { DataType: 'String', StringValue: reason.slice(0, 1024) || 'invalid' },
            'gqe-source-message-id': { DataType: 'String', StringValue: sourceMessageId },
          },
        }),
      );
    },
  };
}

/**
 * Runs one invocation with its Lambda request id on every log line written meanwhile, by any
 * logger (`logContext`, src/log.ts): the cold start's, the pipeline's, the OpenStack clients'.
 */
export function inInvocation<T>(context: InvocationContext | undefined, work: () => Promise<T>): Promise<T> {
  return logContext.run(context?.awsRequestId ? { requestId: context.awsRequestId } : {}, work);
}

/**
 * Memoises `open` for the life of the function instance: the first invocation builds the
 * services (the cold start), every later one reuses them. A failed cold start is not cached, so
 * a store that was down at the first invocation is tried again at the next one.
 *
 * @example
 *   export const handler = sqsHandler(onColdStart(() => openFunctionServices(process.env)));
 */
export function onColdStart(open: () => Promise<FunctionServices>, log: () => Logger = bootLog): () => Promise<FunctionServices> {
  let services: Promise<FunctionServices> | undefined;
  return () =>
    (services ??= open().catch((err: unknown) => {
      services = undefined;
      // Said plainly, before Lambda's own report of the failed invocation.
      log().fatal({ err: (err as Error).message, kind: (err as Error).name, code: errorCode(err) }, 'function cannot start');
      throw err;
    }));
}

function bootLog(): Logger {
  try {
    return createLogger(process.env.LOG_LEVEL || 'info');
  } catch {
    return createLogger('info');
  }
}

/** The cold start of the function instances Lambda runs: from process.env, once per instance. */
export const servicesFromEnvironment = onColdStart(() => openFunctionServices(process.env));
