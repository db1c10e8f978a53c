import { readFileSync } from 'node:fs';
import { processIo, type Io } from './commands/output.js';
import { EnforcerError, type ErrorCode } from './errors.js';
import { printable, scrub } from './redact.js';
const USAGE = `glance-quota-enforcer: per-project image quotas for OpenStack Glance, enforced from its notifications

Usage:
  glance-quota-enforcer replay FILE [--limit RESOURCE=VALUE]... [--store URL] [--json]
      Feed FILE (one raw AMQP notification body per line) through the same parse -> ledger ->
      decision path as production and print usage, what is over and what would be deleted.
      --limit   same syntax as QUOTA_LIMITS (image_count_total=5,image_create_rate=20/60s);
                applies to every project, over QUOTA_LIMITS and QUOTA_LIMITS_FILE
      --store   ledger to replay into (default memory://: a what-if never touches the real ledger)
      --json    one JSON document on stdout
  glance-quota-enforcer reconcile [--project ID] [--dry-run] [--json]
      Overwrite the ledger of one project, or of every project that owns images, with Glance's
      listing (the truth), then decide and act on that listing alone: delete the newest queued
      images past the quota (--dry-run or ENFORCEMENT_MODE=dry-run: only record the would-delete).
      A project that fails is reported and the others go on (exit 1 if any failed); a pass whose
      first 3 projects all fail stops. A full pass ends by pruning what is past its retention
      (MESSAGE_, AUDIT_, DELETED_IMAGE_RETENTION_SECONDS), as consume's reconcile does.
  glance-quota-enforcer consume
      The long-lived enforcer: consume Glance's notifications from RabbitMQ (TRANSPORT_URL) into
      the ledger, enforce as projects change, reconcile at start and every RECONCILE_INTERVAL,
      serve /healthz, /readyz and /metrics on METRICS_PORT. SIGTERM drains and exits 0.
  glance-quota-enforcer gate
      The admission endpoint alone (ADMISSION_PORT, default 10921): the proxy in front of
      glance-api asks it before each request, and it refuses a create past the project's quota
      before Glance writes a row. Over the ledger consume keeps (STORE_URL: postgres://, redis://
      shared by many gates and consumers). consume serves the same endpoint when ADMISSION_PORT is set.
  glance-quota-enforcer bridge
      For functions in AWS with the broker on premises (docs/serverless.md): consume Glance's
      notifications from RabbitMQ as consume does, and forward each body unchanged to the SQS
      queue SQS_QUEUE_URL, acknowledging a message only once SQS has accepted it.
  glance-quota-enforcer status [--project ID] [--json]
      Usage (from the ledger), limits (Keystone unified limits over QUOTA_LIMITS) and what is over.
  glance-quota-enforcer actions [--project ID] [--since ISO-TIME] [--json]
      The audit trail: every deletion, would-delete and skip, with its reason, usage and limits.
  glance-quota-enforcer --help | --version

Configuration is by environment variables (README.md lists them all).`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** How the CLI ends on an error: its exit code, and whether the message alone is printed. */
export interface ErrorExit {
  /** 2: the operator must fix the input or the configuration; 1: an operational failure. */
  exit: 1 | 2;
  /** The message says all a person needs: printed alone, without a stack trace. */
  messageOnly: boolean;
}

/**
 * Every error the CLI expects, by its stable code: each `EnforcerError` code, and the codes of the
 * node errors a person causes (a bad flag, a file that is not there). Any other error is a bug:
 * `main` rethrows it.
 */
export const ERROR_EXITS: Readonly<Record<ErrorCode | 'ERR_PARSE_ARGS_*' | 'ENOENT', ErrorExit>> = {
  CONFIG: { exit: 2, messageOnly: true },
  OPENSTACK_CONFIG: { exit: 2, messageOnly: true },
  SCOPE_UNAVAILABLE: { exit: 2, messageOnly: true },
  'ERR_PARSE_ARGS_*': { exit: 2, messageOnly: true },
  STORE_UNAVAILABLE: { exit: 1, messageOnly: true },
  KEYSTONE_AUTH: { exit: 1, messageOnly: true },
  CATALOG: { exit: 1, messageOnly: true },
  OPENSTACK_HTTP: { exit: 1, messageOnly: true },
  OPENSTACK_UNREACHABLE: { exit: 1, messageOnly: true },
  BROKER_UNAVAILABLE: { exit: 1, messageOnly: true },
  BROKER_TIMEOUT: { exit: 1, messageOnly: true },
  ENOENT: { exit: 1, messageOnly: true },
  STORE_DATA: { exit: 1, messageOnly: false },
  ENFORCEMENT_FAILED: { exit: 1, messageOnly: false },
  EVENT_SHAPE: { exit: 1, messageOnly: false },
  LIMITS_UNAVAILABLE: { exit: 1, messageOnly: true },
  PROJECT_BUSY: { exit: 1, messageOnly: true },
  PROJECTS_DEFERRED: { exit: 1, messageOnly: true },
};

/** The entry of `ERROR_EXITS` for `err`; undefined for an error the CLI does not expect. */
export function errorExit(err: unknown): ErrorExit | undefined {
  if (err instanceof EnforcerError) return ERROR_EXITS[err.code];
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  if (typeof code !== 'string') return undefined;
  if (code.startsWith('ERR_PARSE_ARGS')) return ERROR_EXITS['ERR_PARSE_ARGS_*'];
  return code === 'ENOENT' ? ERROR_EXITS.ENOENT : undefined;
}

/** The stack of `err` and of each error it wraps (`cause`), for an error whose message is not enough. */
function withStack(err: Error): string {
  const parts: string[] = [];
  for (let e: unknown = err; e instanceof Error && parts.length < 5; e = e.cause) {
    parts.push(`${parts.length > 0 ? 'caused by: ' : ''}${e.stack ?? `${e.name}: ${e.message}`}`);
  }
  return parts.join('\n');
}

/** Entry point of the bin; returns the exit code. */
export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        io.stdout(USAGE + '\n');
        return command === undefined ? 2 : 0;
      case '--version':
        io.stdout(version() + '\n');
        return 0;
      // Each command is loaded when it is run: a reconcile or a status never loads amqplib, the
      // AWS SDK or prom-client's collectors, and --help none of them (start-up is a CronJob's cost).
      case 'replay':
        return await (await import('./commands/replay.js')).replay(rest, io);
      case 'reconcile':
        return await (await import('./commands/reconcile.js')).reconcileCommand(rest, io);
      case 'status':
        return await (await import('./commands/status.js')).status(rest, io);
      case 'actions':
        return await (await import('./commands/actions.js')).actionsCommand(rest, io);
      case 'consume':
        return await (await import('./commands/consume.js')).consume(rest);
      case 'gate':
        return await (await import('./commands/gate.js')).gate(rest);
      case 'bridge':
        return await (await import('./commands/bridge.js')).bridge(rest);
      default:
        io.stderr(`unknown command '${command}'\n\n${USAGE}\n`);
        return 2;
    }
  } catch (err) {
    // An error may quote what a server or a store said, or a value from the environment.
    const shown = (text = (err as Error).message) =>
      `${scrub(text)
        .split('\n')
        .map((line) => printable(line))
        .join('\n')}\n`;
    const handling = errorExit(err);
    if (handling) {
      io.stderr(handling.messageOnly ? shown() : shown(withStack(err as Error)));
      return handling.exit;
    }
    if (err instanceof Error) err.message = scrub(err.message);
    throw err;
  }
}
