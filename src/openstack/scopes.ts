import type { Credentials } from './identity.js';

/**
 * The two scopes a token of the enforcer's identity can have (see keystone.ts: system for the
 * limits, project for Glance), how Keystone is asked for each, and why an identity cannot have one.
 */
export type Scope = 'project' | 'system';

/** The JSON body of `POST /v3/auth/tokens` for `scope`. Application credentials carry their own scope. */
export function authRequestBody(credentials: Credentials, scope: Scope): object {
  const { identity } = credentials;
  if (identity.method === 'application_credential') {
    return { auth: { identity: { methods: ['application_credential'], application_credential: { id: identity.id, secret: identity.secret } } } };
  }
  const scopeBody = scope === 'system' ? { system: { all: true } } : { project: credentials.project };
  return { auth: { identity: { methods: ['password'], password: { user: { ...identity.user, password: identity.password } } }, scope: scopeBody } };
}

/** Why `credentials` cannot give a token of `scope`, or undefined when they can. */
export function scopeUnavailableReason(credentials: Credentials, scope: Scope): string | undefined {
  const { identity } = credentials;
  if (scope === 'system') {
    if (identity.method === 'application_credential') {
      return (
        'no system-scoped token: application credentials are bound to the project they were created in, and Keystone issues no system-scoped token from one. ' +
        "Reading other projects' unified limits needs it (a project-scoped token sees only its own project's limits: GET /v3/limits answers [] for the others). " +
        'Use a password identity with OS_SYSTEM_SCOPE=all and the reader role on system scope, or rely on static limits'
      );
    }
    if (!credentials.systemScope) {
      return (
        "no system-scoped token: OS_SYSTEM_SCOPE is not set. Reading other projects' unified limits needs one (a project-scoped token sees only its own project's limits). " +
        'Set OS_SYSTEM_SCOPE=all and grant the user reader on system scope (openstack role add --system all --user <user> reader)'
      );
    }
    return undefined;
  }
  if (identity.method === 'password' && !credentials.project) {
    return (
      "no project-scoped token: neither OS_PROJECT_NAME nor OS_PROJECT_ID is set. Glance needs one (with Glance 25 a system-scoped token lists no project's images). " +
      'Set OS_PROJECT_NAME (and OS_PROJECT_DOMAIN_NAME) to a project where the user has the admin role'
    );
  }
  return undefined;
}
