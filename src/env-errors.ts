import type { z } from 'zod';
import { ConfigError } from './errors.js';
import { scrub } from './redact.js';
import { firstIssue } from './zod-issues.js';

/**
 * How an error about an environment variable reads: the variable, what was expected, the value
 * given (scrubbed of secrets), and a value that works.
 */

/** A value that works, where the variable's default (ENV_DEFAULTS) is not the best example. */
const EXAMPLES: Record<string, string> = {
  ENFORCEMENT_MODE: 'ENFORCEMENT_MODE=dry-run',
  LOG_LEVEL: 'LOG_LEVEL=debug',
  PROTECTED_QUEUED_IMAGES: 'PROTECTED_QUEUED_IMAGES=report',
  METRICS_HOST: 'METRICS_HOST=127.0.0.1',
  ADMISSION_FAIL: 'ADMISSION_FAIL=closed',
  ADMISSION_PORT: 'ADMISSION_PORT=10921',
  SQS_QUEUE_URL: 'SQS_QUEUE_URL=https://sqs.eu-west-1.amazonaws.com/123456789012/glance-quota-enforcer-prod-notifications',
  SQS_DEAD_LETTER_QUEUE_URL: 'SQS_DEAD_LETTER_QUEUE_URL=https://sqs.eu-west-1.amazonaws.com/123456789012/glance-quota-enforcer-prod-dead-letters',
  OS_PASSWORD_SECRET_ARN: 'OS_PASSWORD_SECRET_ARN=arn:aws:secretsmanager:eu-west-1:123456789012:secret:gqe-os-password-AbCdEf',
  OS_APPLICATION_CREDENTIAL_SECRET_ARN: 'OS_APPLICATION_CREDENTIAL_SECRET_ARN=arn:aws:ssm:eu-west-1:123456789012:parameter/gqe/app-credential-secret',
  STORE_URL_SECRET_ARN: 'STORE_URL_SECRET_ARN=arn:aws:secretsmanager:eu-west-1:123456789012:secret:gqe-store-url-AbCdEf',
};

function exampleOf(name: string, defaults: Readonly<Record<string, unknown>>): string | undefined {
  if (EXAMPLES[name]) return EXAMPLES[name];
  const value = defaults[name];
  return value === undefined || value === '' ? undefined : `${name}=${String(value)}`;
}

/**
 * The variables `schema` knows, an empty one as unset; the first bad one named, with a value that
 * works (an example, or its default from `defaults`).
 *
 * @example
 *   parseEnv(EnvSchema, { PREFETCH: 'many' }, ENV_DEFAULTS);   // ConfigError: PREFETCH: ..., got 'many'; for example PREFETCH=4096
 */
export function parseEnv<S extends z.ZodObject>(schema: S, env: NodeJS.ProcessEnv, defaults: Readonly<Record<string, unknown>>): z.infer<S> {
  const known = Object.fromEntries(Object.keys(schema.shape).map((k) => [k, env[k] === '' ? undefined : env[k]]));
  const parsed = schema.safeParse(known);
  if (!parsed.success) {
    const issue = firstIssue(parsed.error);
    const name = String(issue.field);
    const example = exampleOf(name, defaults);
    throw new ConfigError(`${name}: ${issue.message}, got '${scrub(String(env[name]))}'${example ? `; for example ${example}` : ''}`);
  }
  return parsed.data;
}
