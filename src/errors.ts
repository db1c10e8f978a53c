/**
 * The stable code of each error the enforcer throws on purpose. A code never changes once given:
 * the CLI maps it to an exit code (src/cli.ts, `ERROR_EXITS`), and code that must tell errors apart
 * can key on it rather than on a class name. Every class below and in the adapters
 * (src/openstack/errors.ts, src/transport/amqp.ts, src/doors/lambda/) has exactly one.
 */
export type ErrorCode =
  | 'CONFIG'
  | 'STORE_UNAVAILABLE'
  | 'STORE_DATA'
  | 'OPENSTACK_CONFIG'
  | 'KEYSTONE_AUTH'
  | 'SCOPE_UNAVAILABLE'
  | 'CATALOG'
  | 'OPENSTACK_HTTP'
  | 'OPENSTACK_UNREACHABLE'
  | 'BROKER_TIMEOUT'
  | 'BROKER_UNAVAILABLE'
  | 'ENFORCEMENT_FAILED'
  | 'EVENT_SHAPE'
  | 'LIMITS_UNAVAILABLE'
  | 'PROJECT_BUSY'
  | 'PROJECTS_DEFERRED';

/**
 * The base of every error the enforcer throws on purpose: a stable `code`, `name` set from the
 * class (esbuild keeps class names in the function bundles), and the wrapped error as `cause`.
 * The message stays the one a person reads; `cause` is never printed in place of it.
 */
export abstract class EnforcerError extends Error {
  abstract readonly code: ErrorCode;

  /** `options.cause`: the error this one wraps (ES2022), kept for a stack trace or a debugger. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * Thrown for input a human must fix (environment, flags, files). Its message names the input and
 * shows a value that works; the CLI prints it alone, without a stack trace.
 */
export class ConfigError extends EnforcerError {
  override readonly code = 'CONFIG';
}

/** The ledger store cannot be opened or reached; the message names STORE_URL and what to check. */
export class StoreUnavailableError extends EnforcerError {
  override readonly code = 'STORE_UNAVAILABLE';
}

/**
 * The store refused a batch because of what one of its messages holds (PostgreSQL SQLSTATE class
 * 21/22/23, a total past what the store keeps exactly, text no store can keep faithfully), not
 * because it is down: retrying the same batch fails again. `Pipeline.ingest` splits the batch to
 * find the message at fault and makes only that one `invalid`; an outage is any other error.
 */
export class StoreDataError extends EnforcerError {
  override readonly code = 'STORE_DATA';
}

/**
 * A project is over, but its limits did not come from the configured source (Keystone failed, and
 * only a fallback or a stale table is in hand): nothing is deleted. The door retries it as any
 * failed enforcement (the consume worker with backoff, a function's batch, the next reconcile).
 */
export class LimitsUnavailableError extends EnforcerError {
  override readonly code = 'LIMITS_UNAVAILABLE';
}

/**
 * A project is being decided elsewhere, or was listed less than ENFORCE_INTERVAL_SECONDS ago (its
 * lease in the shared store is another call's): nothing was listed and nothing deleted. Not a
 * failure: the door defers the project and tries again after `retryAfterMs`. Also thrown by a
 * decision that lost its lease midway, before its next DELETE.
 */
export class ProjectBusyError extends EnforcerError {
  override readonly code = 'PROJECT_BUSY';

  constructor(
    readonly projectId: string,
    readonly retryAfterMs: number,
    message = `project ${projectId} is being decided by another replica, or was listed within ENFORCE_INTERVAL_SECONDS; retry in ${retryAfterMs} ms`,
  ) {
    super(message);
  }
}

/** The stable code of an error the enforcer threw on purpose, for a log line; undefined for any other. */
export function errorCode(err: unknown): ErrorCode | undefined {
  return err instanceof EnforcerError ? err.code : undefined;
}
