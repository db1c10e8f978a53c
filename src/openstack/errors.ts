/**
 * Typed errors of the OpenStack adapters. Every message names the input at fault and the fix, and
 * none ever carries a password, an application credential secret or a token: messages are built
 * from names and status codes, and any text echoed from a server goes through `scrub` first.
 */
import { EnforcerError } from '../errors.js';

/** A setting (environment variable or clouds.yaml key) is missing, malformed or contradictory. */
export class OpenStackConfigError extends EnforcerError {
  override readonly code = 'OPENSTACK_CONFIG';
  constructor(
    /** The environment variable at fault, e.g. `OS_AUTH_URL`. */
    readonly variable: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Keystone refused to issue a token (POST /v3/auth/tokens answered 4xx). Never retried. */
export class KeystoneAuthError extends EnforcerError {
  override readonly code = 'KEYSTONE_AUTH';
  constructor(
    readonly status: number,
    readonly scope: 'project' | 'system',
    message: string,
  ) {
    super(message);
  }
}

/**
 * The credentials cannot give a token of the scope an operation needs, e.g. a system-scoped token
 * from an application credential. A configuration problem: retrying does not help.
 */
export class ScopeUnavailableError extends EnforcerError {
  override readonly code = 'SCOPE_UNAVAILABLE';
  constructor(
    readonly scope: 'project' | 'system',
    message: string,
  ) {
    super(message);
  }
}

/** The service catalog has no endpoint matching the type, interface and region asked for. */
export class CatalogError extends EnforcerError {
  override readonly code = 'CATALOG';
}

/** A Keystone or Glance call answered with a status the caller cannot turn into a result. */
export class OpenStackHttpError extends EnforcerError {
  override readonly code = 'OPENSTACK_HTTP';
  constructor(
    readonly service: 'keystone' | 'glance',
    readonly method: string,
    readonly url: string,
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** No answer at all (refused, reset, timed out) after every retry. */
export class OpenStackUnreachableError extends EnforcerError {
  override readonly code = 'OPENSTACK_UNREACHABLE';
  constructor(
    readonly service: 'keystone' | 'glance',
    readonly method: string,
    readonly url: string,
    readonly attempts: number,
    message: string,
    /** `cause`: the connection error of the last attempt. */
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Every secret out of echoed server text, in any escaping (src/redact.ts). */
export { scrub } from '../redact.js';

/** A URL fit for a message: its password masked, parsable or not (src/redact.ts). */
export { redactUrl as displayUrl } from '../redact.js';
