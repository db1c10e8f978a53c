import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigError } from './errors.js';
import { LimitsFile, parseLimits, type ProjectLimits } from './quota/limits.js';

/**
 * Every setting is an environment variable, declared once here. README's table is checked against
 * this schema by test/unit/config.test.ts, so the two cannot drift apart.
 */
export const EnvSchema = z.object({
  STORE_URL: z
    .string()
    .default('sqlite://./data/glance-quota.db')
    .meta({ description: 'Where the ledger lives: `sqlite://PATH` (embedded, one process) or `memory://` (lost at exit).' }),
  QUOTA_LIMITS: z
    .string()
    .default('')
    .meta({ description: 'Static limits for every project, the fallback below Keystone: `image_count_total=100,image_size_total=10240,image_create_rate=20/60s` (sizes in MiB; negative = unlimited; absent = unlimited).' }),
  QUOTA_LIMITS_FILE: z
    .string()
    .default('')
    .meta({ description: 'JSON file of per-project overrides: `{"<project id>": {"image_count_total": 10, "image_create_rate": "5/60s"}}`.' }),
  EXEMPT_PROJECTS: z
    .string()
    .default('')
    .meta({ description: 'Comma-separated project ids that are reported when over but never get an image deleted.' }),
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
    .meta({ description: 'How long processed message ids are kept to recognise duplicates. Merging is idempotent, so a duplicate older than this still changes nothing.' }),
  QUOTA_CREATE_RATE_WINDOW: z.coerce
    .number()
    .int()
    .positive()
    .default(60)
    .meta({ description: 'Window in seconds of an `image_create_rate` limit read from Keystone, which stores only the count: a Keystone limit of 10 means 10 creates per this many seconds.' }),
  LIMITS_CACHE_SECONDS: z.coerce
    .number()
    .int()
    .nonnegative()
    .default(60)
    .meta({ description: 'How long a project\'s Keystone limits are reused before Keystone is asked again (0: every time). While Keystone is down the last known limits stay in force.' }),
});

export type Env = z.infer<typeof EnvSchema>;

export interface Config {
  storeUrl: string;
  limits: { defaults: ProjectLimits; perProject: Record<string, ProjectLimits> };
  exemptProjects: Set<string>;
  mode: 'enforce' | 'dry-run';
  logLevel: Env['LOG_LEVEL'];
  messageRetentionMs: number;
  createRateWindowSeconds: number;
  limitsCacheSeconds: number;
}

export { ConfigError };

const EXAMPLES: Record<string, string> = {
  ENFORCEMENT_MODE: 'ENFORCEMENT_MODE=dry-run',
  LOG_LEVEL: 'LOG_LEVEL=debug',
  MESSAGE_RETENTION_SECONDS: 'MESSAGE_RETENTION_SECONDS=604800',
  QUOTA_CREATE_RATE_WINDOW: 'QUOTA_CREATE_RATE_WINDOW=60',
  LIMITS_CACHE_SECONDS: 'LIMITS_CACHE_SECONDS=60',
};

function readLimitsFile(path: string): Record<string, ProjectLimits> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`QUOTA_LIMITS_FILE: cannot read '${path}' as JSON (${(err as Error).message})`);
  }
  const parsed = LimitsFile.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConfigError(
      `QUOTA_LIMITS_FILE: '${path}' at ${issue.path.join('.') || '(root)'}: ${issue.message}; expected {"<project id>": {"image_count_total": 10}}`,
    );
  }
  return parsed.data;
}

/** Validates the environment; every error names the variable and shows a value that works. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const known = Object.fromEntries(Object.keys(EnvSchema.shape).map((k) => [k, env[k] === '' ? undefined : env[k]]));
  const parsed = EnvSchema.safeParse(known);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const name = String(issue.path[0]);
    const example = EXAMPLES[name];
    throw new ConfigError(`${name}: ${issue.message}, got '${env[name]}'${example ? `; for example ${example}` : ''}`);
  }
  const e = parsed.data;
  const defaults = parseLimits(e.QUOTA_LIMITS, 'QUOTA_LIMITS');
  return {
    storeUrl: e.STORE_URL,
    limits: { defaults, perProject: e.QUOTA_LIMITS_FILE ? readLimitsFile(e.QUOTA_LIMITS_FILE) : {} },
    exemptProjects: new Set(e.EXEMPT_PROJECTS.split(',').map((p) => p.trim()).filter(Boolean)),
    mode: e.ENFORCEMENT_MODE,
    logLevel: e.LOG_LEVEL,
    messageRetentionMs: e.MESSAGE_RETENTION_SECONDS * 1000,
    createRateWindowSeconds: e.QUOTA_CREATE_RATE_WINDOW,
    limitsCacheSeconds: e.LIMITS_CACHE_SECONDS,
  };
}
