import { AsyncLocalStorage } from 'node:async_hooks';
import { pino, type Logger } from 'pino';
import { scrub, scrubFields } from './redact.js';

export type { Logger };

/**
 * Keys whose values are secrets wherever they appear in a log line. pino redacts them before
 * serialising, so a secret never reaches stdout even when a whole request or config is logged.
 */
export const SECRET_PATHS = [
  'password',
  '*.password',
  '*.*.password',
  'secret',
  '*.secret',
  '*.*.secret',
  'token',
  '*.token',
  'headers["x-auth-token"]',
  '*.headers["x-auth-token"]',
  'headers["x-subject-token"]',
  '*.headers["x-subject-token"]',
  'application_credential_secret',
  '*.application_credential_secret',
  'transportUrl',
  '*.transportUrl',
];

/**
 * Fields that every log line written within a unit of work carries, whichever logger writes it:
 * in function mode, the Lambda request id of the invocation (src/doors/lambda/instance.ts). A child
 * logger would reach only the code it is handed to; the pipeline, the store and the OpenStack
 * clients keep the loggers they were built with at the cold start.
 */
export const logContext = new AsyncLocalStorage<Record<string, unknown>>();

/** JSON logs on stderr (stdout stays free for `--json` output). */
export function createLogger(level = process.env.LOG_LEVEL ?? 'info', destination: NodeJS.WritableStream = process.stderr): Logger {
  return pino(
    {
      level,
      base: { name: 'glance-quota-enforcer' },
      redact: { paths: SECRET_PATHS, censor: '[REDACTED]' },
      // Keys name known secrets; the values of every other field (a driver's error, a server's
      // reason) are scrubbed of the secrets the process holds and of URL passwords too.
      formatters: { log: (fields) => scrubFields(fields) },
      // The Lambda request id (and any other invocation context) on every line.
      mixin: () => logContext.getStore() ?? {},
      hooks: {
        logMethod(args, method) {
          method.apply(this, args.map((a) => (typeof a === 'string' ? scrub(a) : a)) as Parameters<typeof method>);
        },
      },
    },
    destination,
  );
}
