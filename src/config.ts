import { isIP } from 'node:net';
import { z } from 'zod';
import { ConfigError } from './errors.js';
import { rememberSecrets, urlPasswords } from './redact.js';
import { readLimitsFile } from './limits-file.js';
import { parseLimits, type ProjectLimits } from './quota/limits.js';
import { secretArn, type SecretSetting } from './secret-arns.js';
import { parseEnv } from './env-errors.js';

/**
 * Every setting is an environment variable, declared once here. README's table is checked against
 * this schema by test/unit/config.test.ts, so the two cannot drift apart.
 */
export const EnvSchema = z.object({
  STORE_URL: z.string().default('sqlite://./data/glance-quota.db').meta({
    description:
      'Where the ledger lives: `sqlite://PATH` (embedded, one process), `postgres://user:pass@host:5432/db` or `redis://[:pass@]host:6379[/db]` (`rediss://` for TLS; both shared by many consumers), or `memory://` (lost at exit).',
  }),
  AUDIT_RETENTION_SECONDS: z.coerce
    .number()
    .int()
    .positive()
    .default(90 * 24 * 3600)
    .meta({ description: 'How long the audit trail (deletions, would-deletes, skips) is kept; pruned once per reconcile.' }),
  DELETED_IMAGE_RETENTION_SECONDS: z.coerce
    .number()
    .int()
    .positive()
    .default(7 * 24 * 3600)
    .meta({
      description:
        'How long the ledger keeps the record of a deleted or killed image (its tombstone) after its last update; pruned once per reconcile. A notification older than this for a purged image may count it again until the next reconcile.',
    }),
  REDIS_KEY_PREFIX: z.string().min(1).default('gqe:').meta({
    description:
      'Start of every key of a `redis://` ledger, so several ledgers or applications can share one Redis database. For Redis Cluster use a hash tag, e.g. `{gqe}:`.',
  }),
  QUOTA_LIMITS: z.string().default('').meta({
    description:
      'Static limits for every project, the fallback below Keystone: `image_count_total=100,image_size_total=10240,image_create_rate=20/60s` (sizes in MiB; negative = unlimited; absent = unlimited).',
  }),
  QUOTA_LIMITS_FILE: z
    .string()
    .default('')
    .meta({ description: 'JSON file of per-project overrides: `{"<project id>": {"image_count_total": 10, "image_create_rate": "5/60s"}}`.' }),
  EXEMPT_PROJECTS: z.string().default('').meta({ description: 'Comma-separated project ids that are reported when over but never get an image deleted.' }),
  PROTECTED_QUEUED_IMAGES: z.enum(['unprotect', 'report']).default('unprotect').meta({
    description:
      "What to do with a queued image past the limit that its owner marked `protected` at create (Glance refuses to DELETE a protected image, even for an admin): `unprotect` clears the flag (PATCH) and deletes it, as Glance's own quota would have refused its POST and a queued image holds no data; `report` leaves it and audits it once as `protected` (the alert GlanceQuotaProtectedOverLimit). Either way it is counted in its own place: the project's other images never go instead.",
  }),
  ENFORCEMENT_MODE: z
    .enum(['enforce', 'dry-run'])
    .default('enforce')
    .meta({ description: '`enforce` deletes verified excess images; `dry-run` only records what it would delete.' }),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
    .default('info')
    .meta({ description: 'pino log level; logs are JSON lines on stderr.' }),
  MESSAGE_RETENTION_SECONDS: z.coerce
    .number()
    .int()
    .positive()
    .default(7 * 24 * 3600)
    .meta({
      description:
        'How long processed message ids are kept to recognise duplicates. Merging is idempotent, so a duplicate older than this still changes nothing.',
    }),
  MAX_MESSAGE_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .max(64 * 1024 * 1024)
    .default(1024 * 1024)
    .meta({
      description:
        "Largest notification body accepted, in bytes; a larger one is invalid (dead-lettered) before it is parsed, so one huge body cannot exhaust memory. Glance's are a few KiB.",
    }),
  GLANCE_RESPONSE_MAX_BYTES: z.coerce
    .number()
    .int()
    .min(1024 * 1024)
    .max(1024 * 1024 * 1024)
    .default(64 * 1024 * 1024)
    .meta({
      description:
        'Largest Glance answer read, in bytes. A page up to 8 MiB (or half this, if less) is parsed whole; past that, and after a page of fat images, a listing is read as a stream that keeps only the fields the rule needs (memory does not grow with this: skipped values are never held). Pages aim at 4 MiB, and a page over this is asked again with fewer images, down to one image, which is read whatever its size (no tenant can make its images unlistable; the per-call timeout still bounds it). An honest image is 1-3 KiB; on MySQL a property value holds at most 64 KiB, so an image at most about 8 MiB (128 properties, `image_property_quota`); on PostgreSQL or SQLite Glance accepts MBs per property.',
    }),
  CLOCK_SKEW_SECONDS: z.coerce.number().int().nonnegative().max(86_400).default(300).meta({
    description:
      "How far ahead of the enforcer's clock a notification's times (oslo `timestamp`, `created_at`, `updated_at`, `deleted_at`) may be; a later one is invalid (dead-lettered): a forged message dated in the future would otherwise win every merge.",
  }),
  STALL_SECONDS: z.coerce.number().int().positive().default(120).meta({
    description:
      '`consume`: `/readyz` fails when a batch of deliveries has been in hand (neither acknowledged nor given back to the broker) this long, so an orchestrator restarts a stuck consumer.',
  }),
  SHUTDOWN_SECONDS: z.coerce.number().int().positive().default(10).meta({
    description:
      'On SIGTERM, `consume` stops taking messages, commits and acknowledges what is in hand, abandons the enforcement backlog (the reconcile at start finds it again) and exits within this many seconds.',
  }),
  QUOTA_CREATE_RATE_WINDOW: z.coerce.number().int().positive().default(60).meta({
    description:
      'Window in seconds of an `image_create_rate` limit read from Keystone, which stores only the count: a Keystone limit of 10 means 10 creates per this many seconds.',
  }),
  LIMITS_CACHE_SECONDS: z.coerce.number().int().nonnegative().default(60).meta({
    description:
      "How long the table of Keystone limits (every project's, read in one listing) is reused before Keystone is asked again (0: every time); a project found over re-reads it at once. While Keystone is down the last known limits stay in force.",
  }),
  TRANSPORT_URL: z.string().default('').meta({
    description:
      "oslo.messaging's transport_url, as in glance-api.conf: `rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost` (hosts tried in turn; `?ssl=1` or `amqps://` for TLS). Required by `consume`.",
  }),
  TRANSPORT_CA_FILE: z.string().default('').meta({ description: "PEM file of the CA that signed the broker's certificate (oslo's `ssl_ca_file`)." }),
  AMQP_DURABLE_QUEUES: z.enum(['true', 'false']).default('false').meta({
    description:
      "oslo's `[oslo_messaging_rabbit] amqp_durable_queues` as Glance has it: the notification exchange is durable only when it is on. A mismatch is RabbitMQ's 406.",
  }),
  NOTIFICATION_EXCHANGE: z
    .string()
    .min(1)
    .default('glance')
    .meta({ description: 'The exchange Glance publishes to (its `control_exchange`, `glance` by default).' }),
  NOTIFICATION_TOPIC: z
    .string()
    .min(1)
    .default('notifications')
    .meta({ description: "Glance's `[oslo_messaging_notifications] topics`; the enforcer binds `<topic>.info`." }),
  QUEUE_NAME: z.string().min(1).default('glance-quota-enforcer').meta({
    description:
      "The enforcer's own durable queue (never the shared `notifications.info`, which Ceilometer reads). Its dead letters go to `<QUEUE_NAME>.dead`.",
  }),
  QUEUE_MAX_LENGTH: z.coerce.number().int().positive().default(1_000_000).meta({
    description:
      'Most messages the queue (and its dead-letter queue) may hold while the enforcer is down; the oldest are dropped beyond it, and the reconcile at start catches up.',
  }),
  QUEUE_MAX_BYTES: z.coerce
    .number()
    .int()
    .positive()
    .default(1024 * 1024 * 1024)
    .meta({
      description:
        "Most bytes of message bodies the queue (and, apart, its dead-letter queue) may hold (`x-max-length-bytes`): a flood of fat notifications cannot fill the broker's disk. The oldest are dropped beyond it, and the reconcile catches up. A queue declared before with other bounds must be deleted first (the error says how).",
    }),
  PREFETCH: z.coerce.number().int().positive().default(4096).meta({
    description:
      'Unacknowledged messages in flight; a batch committed in one store write is at most a quarter of it, so that the next batches arrive during a commit.',
  }),
  RECONCILE_INTERVAL: z
    .string()
    .default('15m')
    .meta({ description: '`consume` reconciles from Glance at start and then this often: `900`, `900s`, `15m`, `1h`; `0` turns the periodic run off.' }),
  ENFORCE_CONCURRENCY: z.coerce
    .number()
    .int()
    .positive()
    .default(8)
    .meta({ description: 'Candidates of one project deleted at once (Glance API calls in parallel).' }),
  ENFORCE_INTERVAL_SECONDS: z.coerce.number().int().min(0).default(5).meta({
    description:
      'At most one listing of a project on Glance per this many seconds, across replicas sharing the ledger: what arrives for it meanwhile is coalesced and decided after. A flood of creates is cut within about this long; a project of 100k images (~200 GETs a listing) costs Glance at most ~40 GETs a second. 0: a project is only never decided by two at once.',
  }),
  LEASE_SECONDS: z.coerce.number().int().min(3).default(30).meta({
    description:
      'The lease a replica takes in the shared store to decide a project (list, delete, audit), renewed every third of it while it runs: a replica that dies holding it blocks the project this long at most. A decision that loses it stops before its next DELETE.',
  }),
  ENFORCE_PROJECTS: z.coerce
    .number()
    .int()
    .positive()
    .default(4)
    .meta({ description: '`consume`: projects decided at once (each with up to `ENFORCE_CONCURRENCY` deletions in flight).' }),
  ENFORCE_MAX_ATTEMPTS: z.coerce.number().int().positive().default(6).meta({
    description:
      'Consecutive failed enforcements of a project (`consume`: retries with backoff; Amazon MQ function: invocations) after which it is reported (`gqe_enforcement_abandoned_total`, a log line at error) and left to the reconcile, instead of holding a batch or a retry loop forever.',
  }),
  METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(10920).meta({
    description:
      "HTTP port of `/healthz`, `/readyz` and `/metrics` (Prometheus) in `consume`; 0 picks a free port. Not 9100: that is node_exporter's, which OpenStack hosts commonly run, and the enforcer often shares their network (Kolla's host networking).",
  }),
  METRICS_HOST: z
    .string()
    .default('0.0.0.0')
    .refine((v) => isIP(v) !== 0, { message: "expected an IP address to bind (127.0.0.1, 0.0.0.0, ::, or one of the host's addresses)" })
    .meta({
      description:
        "Address the `METRICS_PORT` listener binds: `0.0.0.0` (every IPv4 interface, what a container or a remote Prometheus needs), `::`, `127.0.0.1`, or one address such as the host's management network.",
    }),
  METRICS_PROJECTS: z.coerce.number().int().min(0).max(10_000).default(100).meta({
    description:
      '`consume`: how many projects, those nearest or over their limits, get gauges of their own (`gqe_project_usage`, `gqe_project_limit`, by project and resource), so that the series never grow with the number of projects; a project that leaves them leaves `/metrics`. 0 turns them off; `gqe_projects_over_limit` counts every project all the same.',
  }),
  PUBLISH_EXCHANGE: z
    .string()
    .default('glance_quota_enforcer')
    .meta({ description: 'Where `consume` publishes its own oslo-format notifications (`quota_enforcer.*` event types); empty turns them off.' }),
  PUBLISH_TOPIC: z
    .string()
    .min(1)
    .default('notifications')
    .meta({ description: 'Topic of those notifications: routing key `<topic>.info` (`.warn` for limit.exceeded).' }),
  SQS_QUEUE_URL: z
    .string()
    .default('')
    .refine((v) => v === '' || /^https?:\/\/[^\s/]+\/\d+\/[\w-]+(\.fifo)?$/.test(v), { message: 'expected an SQS queue URL' })
    .meta({
      description:
        "The SQS queue `bridge` forwards Glance's notifications to: the stack's `NotificationsQueueUrl` output, e.g. `https://sqs.eu-west-1.amazonaws.com/123456789012/glance-quota-enforcer-prod-notifications`. Required by `bridge`; AWS credentials come from the AWS SDK's usual sources (`AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, ...), the region from `AWS_REGION` or else the URL (docs/serverless.md).",
    }),
  SQS_DEAD_LETTER_QUEUE_URL: z
    .string()
    .default('')
    .refine((v) => v === '' || /^https?:\/\/[^\s/]+\/\d+\/[\w-]+(\.fifo)?$/.test(v), { message: 'expected an SQS queue URL' })
    .meta({
      description:
        "Function mode (`sqs` function, set by serverless.yml): where a record that is not a valid notification goes at once, with the reason in its message attribute `gqe-reason`. Unset: the record is reported as failed, and the queue's redrive policy moves it to its dead-letter queue after `maxReceiveCount` receives.",
    }),
  RECONCILE_BUDGET_SECONDS: z.coerce.number().int().positive().default(600).meta({
    description:
      "Function mode (`reconcile` function): start no new page of the listing or project after this many seconds of a run (nor within 30 s of the function's timeout); the next scheduled run resumes the pass where this one stopped.",
  }),
  ADMISSION_PORT: z.coerce.number().int().min(0).max(65535).optional().meta({
    description:
      'Port of the admission endpoint `/admission/v1/image-create`, which the proxy in front of glance-api asks before each request (nginx `auth_request`, Envoy `ext_authz`, HAProxy); `consume` serves it when set, `gate` always (default there 10921). Unset: `consume` serves none. 0 picks a free port.',
  }),
  ADMISSION_HOST: z
    .string()
    .default('127.0.0.1')
    .refine((v) => isIP(v) !== 0, { message: "expected an IP address to bind (127.0.0.1, 0.0.0.0, ::, or one of the host's addresses)" })
    .meta({
      description:
        "Address the admission endpoint binds: the proxy's side only (loopback when the proxy runs on the same host, as Kolla's HAProxy and the nginx of `deploy/nginx/` do).",
    }),
  ADMISSION_FAIL: z.enum(['open', 'closed']).default('open').meta({
    description:
      'What the admission endpoint answers when it cannot decide (the store, Keystone or Glance failing or slower than `ADMISSION_TIMEOUT_SECONDS`): `open` allows the create (the cleanup after the fact stays the backstop), `closed` refuses it. Counted in `gqe_admission_decisions_total{reason="error"|"timeout"}` either way.',
  }),
  ADMISSION_TIMEOUT_SECONDS: z.coerce.number().positive().default(2).meta({
    description:
      "Longest the admission endpoint takes to decide (a Keystone token check or a Glance listing on a miss); past it, `ADMISSION_FAIL` answers. Keep it under the proxy's own timeout for the check (`proxy_read_timeout 5s` in `deploy/nginx/`).",
  }),
  ADMISSION_RESERVATION_SECONDS: z.coerce.number().int().positive().default(30).meta({
    description:
      "How long an admitted create holds its place in the project's quota when its `image.create` notification does not arrive (Glance refused the request, or the notification was lost); the notification ends it sooner.",
  }),
  ADMISSION_CONFIRM_SECONDS: z.coerce.number().min(0).default(5).meta({
    description:
      "When the ledger says a project is at its limit, the admission endpoint confirms it on Glance's listing (a forged `image.create` must not block its owner) and trusts that confirmation this long; also how long a forged notification can block a create at most.",
  }),
  ADMISSION_TOKEN_CACHE_SIZE: z.coerce.number().int().positive().default(10000).meta({
    description: 'Client tokens whose project the admission endpoint remembers (by SHA-256, never the token), each until min(5 minutes, its expiry).',
  }),
  OS_PASSWORD_SECRET_ARN: secretArn('OS_PASSWORD'),
  OS_APPLICATION_CREDENTIAL_SECRET_ARN: secretArn('OS_APPLICATION_CREDENTIAL_SECRET'),
  STORE_URL_SECRET_ARN: secretArn('STORE_URL'),
});

export type Env = z.infer<typeof EnvSchema>;

/**
 * Every setting's default, as the schema gives it to an empty environment: the one place a default
 * is written. Code that needs one outside a loaded Config (an adapter's option left out) reads it
 * here.
 */
export const ENV_DEFAULTS: Readonly<Env> = EnvSchema.parse({});

/**
 * The settings as the code reads them: what loadConfig makes of the environment (times in ms,
 * flags as booleans, the limits parsed). Its fields are documented where loadConfig sets them.
 */
export type Config = ReturnType<typeof loadConfig>;

/** `900`, `900s`, `15m`, `1h` to milliseconds. */
export function parseDuration(value: string, name: string): number {
  const m = /^(\d+)(s|m|h)?$/.exec(value.trim());
  if (!m) throw new ConfigError(`${name}: expected a duration such as 900, 900s, 15m or 1h, got '${value}'`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600 }[(m[2] ?? 's') as 's' | 'm' | 'h'] * 1000;
}

export { ConfigError };

const SecretArnsSchema = EnvSchema.pick({ OS_PASSWORD_SECRET_ARN: true, OS_APPLICATION_CREDENTIAL_SECRET_ARN: true, STORE_URL_SECRET_ARN: true });

/**
 * Only the `<SETTING>_SECRET_ARN` variables, '' for a setting given as a plain value: what function
 * mode reads first, so that the configuration is loaded once, with the secrets' values in it.
 */
export function loadSecretArns(env: NodeJS.ProcessEnv = process.env): Record<SecretSetting, string> {
  return secretArnsOf(parseEnv(SecretArnsSchema, env, ENV_DEFAULTS));
}

function secretArnsOf(e: z.infer<typeof SecretArnsSchema>): Record<SecretSetting, string> {
  return { OS_PASSWORD: e.OS_PASSWORD_SECRET_ARN, OS_APPLICATION_CREDENTIAL_SECRET: e.OS_APPLICATION_CREDENTIAL_SECRET_ARN, STORE_URL: e.STORE_URL_SECRET_ARN };
}

/** Validates the environment; every error names the variable and shows a value that works. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env) {
  const e = parseEnv(EnvSchema, env, ENV_DEFAULTS);
  // The passwords in the URLs stay out of every log line and error from now on (src/redact.ts).
  rememberSecrets(...urlPasswords(e.STORE_URL), ...urlPasswords(e.TRANSPORT_URL ?? ''));
  const defaults = parseLimits(e.QUOTA_LIMITS, 'QUOTA_LIMITS');
  return {
    storeUrl: e.STORE_URL,
    redisKeyPrefix: e.REDIS_KEY_PREFIX,
    limits: { defaults, perProject: e.QUOTA_LIMITS_FILE ? readLimitsFile(e.QUOTA_LIMITS_FILE) : ({} as Record<string, ProjectLimits>) },
    exemptProjects: new Set(
      e.EXEMPT_PROJECTS.split(',')
        .map((p) => p.trim())
        .filter(Boolean),
    ),
    mode: e.ENFORCEMENT_MODE,
    protectedQueued: e.PROTECTED_QUEUED_IMAGES,
    logLevel: e.LOG_LEVEL,
    messageRetentionMs: e.MESSAGE_RETENTION_SECONDS * 1000,
    auditRetentionMs: e.AUDIT_RETENTION_SECONDS * 1000,
    deletedImageRetentionMs: e.DELETED_IMAGE_RETENTION_SECONDS * 1000,
    createRateWindowSeconds: e.QUOTA_CREATE_RATE_WINDOW,
    limitsCacheSeconds: e.LIMITS_CACHE_SECONDS,
    // What the door admits besides the schemas (src/notification/parse.ts).
    door: { maxMessageBytes: e.MAX_MESSAGE_BYTES, clockSkewSeconds: e.CLOCK_SKEW_SECONDS },
    glanceResponseMaxBytes: e.GLANCE_RESPONSE_MAX_BYTES,
    stallMs: e.STALL_SECONDS * 1000,
    shutdownMs: e.SHUTDOWN_SECONDS * 1000,
    amqp: {
      transportUrl: e.TRANSPORT_URL,
      caFile: e.TRANSPORT_CA_FILE,
      durableExchange: e.AMQP_DURABLE_QUEUES === 'true',
      exchange: e.NOTIFICATION_EXCHANGE,
      topic: e.NOTIFICATION_TOPIC,
      queue: e.QUEUE_NAME,
      maxLength: e.QUEUE_MAX_LENGTH,
      maxBytes: e.QUEUE_MAX_BYTES,
      prefetch: e.PREFETCH,
      publishExchange: e.PUBLISH_EXCHANGE,
      publishTopic: e.PUBLISH_TOPIC,
    },
    reconcileIntervalMs: parseDuration(e.RECONCILE_INTERVAL, 'RECONCILE_INTERVAL'),
    enforceConcurrency: e.ENFORCE_CONCURRENCY,
    enforceIntervalMs: e.ENFORCE_INTERVAL_SECONDS * 1000,
    leaseMs: e.LEASE_SECONDS * 1000,
    enforceProjects: e.ENFORCE_PROJECTS,
    enforceMaxAttempts: e.ENFORCE_MAX_ATTEMPTS,
    metricsPort: e.METRICS_PORT,
    metricsHost: e.METRICS_HOST,
    // METRICS_PROJECTS: the projects with gauges of their own.
    metricsProjects: e.METRICS_PROJECTS,
    sqs: { queueUrl: e.SQS_QUEUE_URL, deadLetterQueueUrl: e.SQS_DEAD_LETTER_QUEUE_URL },
    reconcileBudgetMs: e.RECONCILE_BUDGET_SECONDS * 1000,
    // The admission endpoint (src/doors/admission.ts); `port` undefined: `consume` serves none.
    admission: {
      port: e.ADMISSION_PORT,
      host: e.ADMISSION_HOST,
      failClosed: e.ADMISSION_FAIL === 'closed',
      timeoutMs: e.ADMISSION_TIMEOUT_SECONDS * 1000,
      reservationMs: e.ADMISSION_RESERVATION_SECONDS * 1000,
      confirmMs: e.ADMISSION_CONFIRM_SECONDS * 1000,
      tokenCacheSize: e.ADMISSION_TOKEN_CACHE_SIZE,
    },
    // `<SETTING>_SECRET_ARN`, '' when the setting is a plain value.
    secretArns: secretArnsOf(e),
  };
}
