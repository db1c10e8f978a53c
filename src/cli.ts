import { printable, scrub } from './redact.js';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError } from './config.js';
import { EnforcerError, type ErrorCode } from './errors.js';
import type { ProjectReport } from './pipeline.js';
import { mergeLimits, parseLimits, type ProjectLimits } from './quota/limits.js';
import { USAGE_RESOURCES } from './quota/resources.js';
import { reconcile } from './doors/reconcile.js';
import { replayFile, replayJson } from './doors/replay.js';
import { openRuntime } from './composition-root.js';
import { UnifiedLimits } from './openstack/limits.js';
import { consume } from './commands/consume.js';
import type { EnforcementReport } from './pipeline.js';

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

interface Io {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const processIo: Io = {
  stdout: (t) => void process.stdout.write(t),
  stderr: (t) => void process.stderr.write(t),
};

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function formatTable(projects: ProjectReport[]): string {
  const header = ['project', ...USAGE_RESOURCES, 'over', 'to_delete'];
  const rows = projects.map((p) => [
    printable(p.projectId),
    ...USAGE_RESOURCES.map((r) => String(p.usage[r])),
    p.over.join(',') || '-',
    String(p.toDelete.length),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

async function replay(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { limit: { type: 'string', multiple: true }, json: { type: 'boolean' }, store: { type: 'string' } },
  });
  const file = positionals[0];
  if (!file || positionals.length > 1) throw new ConfigError('replay: expected exactly one FILE, e.g. replay notifications.jsonl');
  let override: ProjectLimits = {};
  for (const l of values.limit ?? []) override = mergeLimits(override, parseLimits(l, '--limit'));
  const runtime = await openRuntime(process.env, {
    // replay reads a file into its own ledger: memory unless --store says otherwise, never STORE_URL.
    storeUrl: values.store ?? 'memory://',
    overrides: {
      limits: (configured) => ({ limitsFor: async (p) => mergeLimits(await configured.limitsFor(p), override) }),
      // Decides, never acts: no Glance, whatever OS_* says.
      glance: null,
      // Replay reports over-quota projects in its output; a log line per project would only repeat it.
      log: null,
    },
  });
  const { pipeline, log } = runtime;
  try {
    const summary = await replayFile(pipeline, file, {
      onInvalid: (line, reason) => io.stderr(`${printable(file)}:${line}: invalid: ${printable(reason)}\n`),
    });
    log.debug({ messages: summary.messages }, 'replay done');
    if (values.json) {
      io.stdout(JSON.stringify(replayJson(summary)) + '\n');
    } else {
      const m = summary.messages;
      io.stdout(`messages: ${m.total} total, ${m.applied} applied, ${m.duplicate} duplicate, ${m.ignored} ignored, ${m.invalid} invalid\n\n`);
      io.stdout(formatTable(summary.projects));
      for (const p of summary.projects.filter((p) => p.toDelete.length > 0)) {
        io.stdout(`\n${printable(p.projectId)} would delete (newest first): ${p.toDelete.map(printable).join(' ')}\n`);
      }
    }
    return 0;
  } finally {
    await runtime.close();
  }
}

/** Limits as operators write them: sizes in MiB, the rate as N/Ws; absent = unlimited. */
function limitsJson(limits: ProjectLimits): Record<string, number | string> {
  const out: Record<string, number | string> = {};
  for (const r of USAGE_RESOURCES) if (limits[r] !== undefined) out[r] = limits[r];
  if (limits.image_create_rate) out.image_create_rate = `${limits.image_create_rate.count}/${limits.image_create_rate.windowSeconds}s`;
  return out;
}

function statusTable(projects: ProjectReport[]): string {
  const header = ['project', ...USAGE_RESOURCES.map((r) => `${r} (use/limit)`), 'over'];
  const rows = projects.map((p) => [
    printable(p.projectId),
    ...USAGE_RESOURCES.map((r) => `${p.usage[r]}/${p.limits[r] ?? '-'}`),
    p.over.join(',') || '-',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

async function status(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({ args, options: { project: { type: 'string' }, json: { type: 'boolean' } } });
  // status only reads: usage comes from the ledger whatever Keystone says, so limits it cannot
  // read are a warning (the static QUOTA_LIMITS stand in), never a reason to print nothing.
  const runtime = await openRuntime(process.env, {
    onLimitsUnavailable: (reason) => io.stderr(`warning: ${reason}\nwarning: showing QUOTA_LIMITS / QUOTA_LIMITS_FILE limits only ('-' is unlimited)\n`),
  });
  try {
    const ids = values.project ? [values.project] : await runtime.pipeline.projects();
    const projects: ProjectReport[] = [];
    for (const id of ids) projects.push(await runtime.pipeline.evaluate(id));
    const failed = runtime.limits instanceof UnifiedLimits ? runtime.limits.failures : 0;
    if (failed > 0) io.stderr(`warning: Keystone's unified limits could not be read for ${failed} of ${ids.length} project(s) (see the log above); those show registered or QUOTA_LIMITS limits\n`);
    if (values.json) {
      io.stdout(JSON.stringify({ projects: projects.map((p) => ({ project_id: p.projectId, usage: p.usage, limits: limitsJson(p.limits), over: p.over })) }) + '\n');
    } else {
      io.stdout(statusTable(projects));
    }
    return 0;
  } finally {
    await runtime.close();
  }
}

function progressBar(io: Io, enabled: boolean) {
  return (done: number, total: number, projectId: string) => {
    if (!enabled || total < 2) return;
    const width = 30;
    const filled = Math.round((done / total) * width);
    io.stderr(`\r[${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${done}/${total} projects ${printable(projectId.slice(0, 12))}${done === total ? '\n' : ''}`);
  };
}

async function reconcileCommand(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({ args, options: { project: { type: 'string' }, json: { type: 'boolean' }, 'dry-run': { type: 'boolean' } } });
  const env = values['dry-run'] ? { ...process.env, ENFORCEMENT_MODE: 'dry-run' } : process.env;
  const runtime = await openRuntime(env, { needGlance: true });
  try {
    const summary = await reconcile(runtime.pipeline, runtime.glance!, {
      ...(values.project ? { projectId: values.project } : {}),
      onProgress: progressBar(io, !values.json && Boolean(process.stderr.isTTY)),
    });
    const count = (kind: string) => summary.projects.reduce((n, p) => n + p.actions.filter((a) => a.action === kind).length, 0);
    const totals = { deleted: count('deleted'), would_delete: count('would-delete'), skipped: count('skipped'), not_deletable: count('not-deletable'), gone: count('gone') };
    if (values.json) {
      io.stdout(JSON.stringify({
        mode: runtime.pipeline.mode,
        listed: summary.listed,
        corrected: summary.corrected,
        unreadable: summary.unreadable,
        failures: summary.failures.map((f) => ({ project_id: f.projectId, error: f.error.message })),
        complete: summary.complete,
        remaining: summary.remaining,
        pruned: summary.pruned,
        duration_ms: summary.durationMs,
        actions: totals,
        projects: summary.projects.map((p: EnforcementReport) => ({
          project_id: p.projectId,
          usage: p.usage,
          limits: limitsJson(p.limits),
          over: p.over,
          actions: p.actions.map((a) => ({ image_id: a.imageId, action: a.action, reason: a.reason })),
        })),
      }) + '\n');
    } else {
      const over = summary.projects.filter((p) => p.over.length > 0);
      io.stdout(
        `reconcile (${runtime.pipeline.mode}): ${summary.projects.length} projects, ${summary.listed} images listed, ` +
          `ledger corrected ${JSON.stringify(summary.corrected)}, ${summary.failures.length} failed, ` +
          `${over.length} over quota; ${totals.deleted} deleted, ${totals.would_delete} would-delete, ${totals.skipped} skipped, ` +
          `${totals.not_deletable} not deletable, ${totals.gone} gone, in ${(summary.durationMs / 1000).toFixed(1)} s\n`,
      );
      for (const p of summary.projects) for (const a of p.actions) io.stdout(`  ${printable(p.projectId)} ${printable(a.imageId)} ${a.action}: ${printable(scrub(a.reason))}\n`);
    }
    // The other projects were reconciled all the same; the exit code tells cron something failed.
    for (const f of summary.failures) io.stderr(`reconcile of project ${f.projectId} failed: ${f.error.message}\n`);
    if (!summary.complete) io.stderr(`reconcile stopped with ${summary.remaining} project(s) not reached: its first projects all failed\n`);
    return summary.failures.length > 0 || !summary.complete ? 1 : 0;
  } finally {
    await runtime.close();
  }
}

async function actionsCommand(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({ args, options: { project: { type: 'string' }, since: { type: 'string' }, json: { type: 'boolean' } } });
  const sinceMs = values.since === undefined ? undefined : Date.parse(values.since);
  if (sinceMs !== undefined && Number.isNaN(sinceMs)) throw new ConfigError(`--since: expected an ISO time such as 2026-11-26T20:00:00Z, got '${values.since}'`);
  // The audit trail is in the ledger alone: no OpenStack identity is read, whatever OS_* says.
  const runtime = await openRuntime(process.env, { overrides: { glance: null } });
  try {
    const actions = await runtime.pipeline.audit({ ...(values.project ? { projectId: values.project } : {}), ...(sinceMs !== undefined ? { sinceMs } : {}) });
    if (values.json) {
      io.stdout(JSON.stringify({
        actions: actions.map((a) => ({ at: new Date(a.atMs).toISOString(), project_id: a.projectId, image_id: a.imageId, action: a.action, reason: a.reason, over: a.over, usage: a.usage, limits: limitsJson(a.limits) })),
      }) + '\n');
    } else {
      for (const a of actions) io.stdout(`${new Date(a.atMs).toISOString()}  ${printable(a.projectId)}  ${printable(a.imageId)}  ${a.action}: ${printable(scrub(a.reason))}\n`);
    }
    return 0;
  } finally {
    await runtime.close();
  }
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
      case 'replay':
        return await replay(rest, io);
      case 'reconcile':
        return await reconcileCommand(rest, io);
      case 'status':
        return await status(rest, io);
      case 'actions':
        return await actionsCommand(rest, io);
      case 'consume':
        return await consume(rest);
      case 'bridge': // loaded on demand: the AWS SDK is for this command only
        return await (await import('./commands/bridge.js')).bridge(rest);
      default:
        io.stderr(`unknown command '${command}'\n\n${USAGE}\n`);
        return 2;
    }
  } catch (err) {
    // An error may quote what a server or a store said, or a value from the environment.
    const shown = (text = (err as Error).message) => `${scrub(text).split('\n').map((line) => printable(line)).join('\n')}\n`;
    const handling = errorExit(err);
    if (handling) {
      io.stderr(handling.messageOnly ? shown() : shown(withStack(err as Error)));
      return handling.exit;
    }
    if (err instanceof Error) err.message = scrub(err.message);
    throw err;
  }
}
