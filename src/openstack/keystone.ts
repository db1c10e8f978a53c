import { rememberSecrets, rememberToken } from '../redact.js';
import { z } from 'zod';
import { createLogger, type Logger } from '../log.js';
import { CatalogService, findEndpoint, type ResolvedEndpoint } from './catalog.js';
import type { Credentials } from './identity.js';
import { authRequestBody, scopeUnavailableReason, type Scope } from './scopes.js';
import { KeystoneAuthError, OpenStackHttpError, ScopeUnavailableError, displayUrl, scrub } from './errors.js';
import { firstIssue } from '../zod-issues.js';
import {
  DEFAULT_RETRY_POLICY,
  retryingTransport,
  type HttpRequest,
  type HttpResponse,
  type RetryPolicy,
  type RetryingTransport,
  type RetryingTransportOptions,
} from './http.js';

/**
 * Keystone v3 client for the enforcer's one identity and its two tokens:
 *
 * - `system` (OS_SYSTEM_SCOPE=all, role reader on system): reads every project's unified limits.
 *   A project-scoped token sees only its own project's limits; `GET /v3/limits?project_id=<other>`
 *   answers `[]`, which would silently turn every project limit into the registered default.
 * - `project` (OS_PROJECT_NAME/ID, role admin there): talks to Glance. With Glance 25 a
 *   system-scoped token lists no project's private or shared images, while a project-scoped admin
 *   token sees and deletes every project's.
 *
 * Tokens are reused until shortly before `expires_at`, and renewed once when a service answers 401.
 */

export type { Scope };

/** The body of `POST /v3/auth/tokens`, as far as the enforcer reads it. */
export const TokenBody = z.object({
  token: z.object({
    expires_at: z.string().refine((v) => !Number.isNaN(Date.parse(v)), { error: 'expected an ISO 8601 time' }),
    issued_at: z.string().optional(),
    user: z.object({ id: z.string(), name: z.string().optional() }),
    project: z.object({ id: z.string(), name: z.string().optional() }).optional(),
    system: z.object({ all: z.boolean() }).optional(),
    roles: z.array(z.object({ name: z.string() })).default([]),
    catalog: z.array(CatalogService).default([]),
  }),
});

export interface Token {
  /** The X-Subject-Token. Never log it (src/log.ts redacts `token`). */
  value: string;
  scope: Scope;
  /** Epoch ms. */
  expiresAt: number;
  /** Epoch ms after which the token is renewed before use. */
  renewAt: number;
  userId: string;
  projectId?: string;
  roles: string[];
  catalog: CatalogService[];
}

/** A token is renewed this long before `expires_at` (or at half its life, if that is shorter). */
export const TOKEN_RENEW_MARGIN_SECONDS = 120;

/** What `GET /v3/auth/tokens` says of a user's token: only what admission needs. */
export const SubjectTokenBody = z.object({
  token: z.object({ expires_at: z.string(), project: z.object({ id: z.string() }).optional() }),
});

/** A user's token as Keystone validated it; no `projectId` for a system- or domain-scoped one. */
export interface SubjectToken {
  projectId?: string;
  expiresAtMs: number;
}

export interface KeystoneClientOptions {
  log?: Logger;
  retry?: RetryPolicy;
  /** Epoch ms; injected by tests. */
  now?: () => number;
  /** Injected by tests: instant, deterministic backoff. */
  sleep?: RetryingTransportOptions['sleep'];
  random?: RetryingTransportOptions['random'];
}

/**
 * @example
 *   const keystone = new KeystoneClient(loadCredentials());
 *   const limits = await keystone.getJson('system', '/registered_limits?service_id=...', schema);
 *   const glance = await keystone.endpoint('image'); // { url, serviceId, regionId }
 */
export class KeystoneClient {
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly transport: RetryingTransport;
  private readonly tokens = new Map<Scope, Token>();
  private readonly pending = new Map<Scope, Promise<Token>>();

  constructor(
    readonly credentials: Credentials,
    private readonly options: KeystoneClientOptions = {},
  ) {
    this.log = options.log ?? createLogger();
    this.now = options.now ?? Date.now;
    this.transport = this.transportFor('keystone');
    // From now on no log line, error or audit record shows them, whoever echoes them (src/redact.ts).
    rememberSecrets(credentials.identity.method === 'password' ? credentials.identity.password : credentials.identity.secret);
  }

  /** A retrying transport with this identity's CA and retry policy (Glance uses one too). */
  transportFor(service: 'keystone' | 'glance'): RetryingTransport {
    return retryingTransport({
      service,
      policy: this.options.retry ?? DEFAULT_RETRY_POLICY,
      log: this.log,
      ...(this.credentials.ca ? { ca: this.credentials.ca } : {}),
      ...(this.options.sleep ? { sleep: this.options.sleep } : {}),
      ...(this.options.random ? { random: this.options.random } : {}),
    });
  }

  /** Throws `ScopeUnavailableError` (no network) when `scope` cannot be had; `purpose` says who needs it. */
  requireScope(scope: Scope, purpose: string): void {
    const reason = scopeUnavailableReason(this.credentials, scope);
    if (reason) throw new ScopeUnavailableError(scope, `${purpose}: ${reason}`);
  }

  /** A valid token of `scope`, from cache unless it is near expiry. Concurrent callers share one request. */
  async token(scope: Scope): Promise<Token> {
    const cached = this.tokens.get(scope);
    if (cached && this.now() < cached.renewAt) return cached;
    const inFlight = this.pending.get(scope);
    if (inFlight) return inFlight;
    const request = this.issue(scope).finally(() => this.pending.delete(scope));
    this.pending.set(scope, request);
    const token = await request;
    this.tokens.set(scope, token);
    return token;
  }

  /** Drops `value` from the cache if it is still the current token of `scope`. */
  invalidate(scope: Scope, value: string): void {
    if (this.tokens.get(scope)?.value === value) this.tokens.delete(scope);
  }

  /**
   * Runs `call` with a token of `scope`; on a 401 it renews the token once and calls again. A
   * second 401 is returned to the caller (the identity lost its role, or the service's own
   * Keystone credentials are broken), since a third try would not change that.
   */
  async withToken(scope: Scope, call: (token: string) => Promise<HttpResponse>): Promise<HttpResponse> {
    const first = await this.token(scope);
    const response = await call(first.value);
    if (response.status !== 401) return response;
    this.log.info({ scope }, 'token refused with 401, renewing it once');
    this.invalidate(scope, first.value);
    const renewed = await this.token(scope);
    return call(renewed.value);
  }

  /** `GET <OS_AUTH_URL>/v3<pathAndQuery>` with a token of `scope`, parsed by `schema`. */
  async getJson<S extends z.ZodType>(scope: Scope, pathAndQuery: string, schema: S): Promise<z.infer<S>> {
    const url = `${this.credentials.authUrl}${pathAndQuery}`;
    const response = await this.withToken(scope, (token) =>
      this.transport({ method: 'GET', url, headers: { accept: 'application/json', 'x-auth-token': token } }),
    );
    if (response.status !== 200) {
      throw new OpenStackHttpError(
        'keystone',
        'GET',
        displayUrl(url),
        response.status,
        `keystone: GET ${displayUrl(url)} answered ${response.status}: ${this.detail(response)}${statusHint(response.status, scope)}`,
      );
    }
    const parsed = schema.safeParse(parseJson(response.text));
    if (!parsed.success) {
      const issue = firstIssue(parsed.error);
      throw new OpenStackHttpError(
        'keystone',
        'GET',
        displayUrl(url),
        response.status,
        `keystone: GET ${displayUrl(url)} answered a body the enforcer does not understand: ${issue.message} at ${issue.path}`,
      );
    }
    return parsed.data;
  }

  /**
   * Who a client's token belongs to, as Keystone says (`GET /v3/auth/tokens?nocatalog` with it as
   * X-Subject-Token), asked with the enforcer's system-scoped token: Keystone's policy lets
   * `reader` on system validate any token. `undefined` when Keystone does not know the token
   * (404: expired, revoked, made up). Any other answer throws. The token is never logged; the
   * error names Keystone's status only.
   */
  async validateToken(subject: string): Promise<SubjectToken | undefined> {
    const url = `${this.credentials.authUrl}/auth/tokens?nocatalog`;
    const response = await this.withToken('system', (token) =>
      this.transport({ method: 'GET', url, headers: { accept: 'application/json', 'x-auth-token': token, 'x-subject-token': subject } }),
    );
    if (response.status === 404) return undefined;
    const parsed = response.status === 200 ? SubjectTokenBody.safeParse(parseJson(response.text)) : undefined;
    if (!parsed?.success) {
      throw new OpenStackHttpError(
        'keystone',
        'GET',
        displayUrl(url),
        response.status,
        `keystone: GET ${displayUrl(url)} (validating a client's token) answered ${response.status}${response.status === 200 ? ' with a body the enforcer does not understand' : statusHint(response.status, 'system')}`,
      );
    }
    const t = parsed.data.token;
    return { ...(t.project ? { projectId: t.project.id } : {}), expiresAtMs: Date.parse(t.expires_at) };
  }

  /**
   * The catalog endpoint of `type` for OS_INTERFACE and OS_REGION_NAME, from the catalog of a
   * `scope` token (by default the project token when there is one, else the system token).
   */
  async endpoint(type: string, scope?: Scope): Promise<ResolvedEndpoint> {
    const from: Scope = scope ?? (scopeUnavailableReason(this.credentials, 'project') ? 'system' : 'project');
    const token = await this.token(from);
    return findEndpoint(token.catalog, type, this.credentials.interface, this.credentials.regionName);
  }

  private async issue(scope: Scope): Promise<Token> {
    this.requireScope(scope, `keystone: cannot issue a ${scope}-scoped token`);
    const url = `${this.credentials.authUrl}/auth/tokens`;
    const request: HttpRequest = {
      method: 'POST',
      url,
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(authRequestBody(this.credentials, scope)),
    };
    const response = await this.transport(request);
    if (response.status >= 400 && response.status < 500) throw this.authError(scope, response);
    if (response.status !== 201) {
      const why = response.status >= 500 ? 'Keystone itself is failing (see its log)' : 'expected 201 Created: is OS_AUTH_URL really Keystone v3?';
      throw new OpenStackHttpError(
        'keystone',
        'POST',
        displayUrl(url),
        response.status,
        `keystone: POST ${displayUrl(url)} answered ${response.status}: ${this.detail(response)}; ${why}`,
      );
    }
    const value = response.headers['x-subject-token'];
    if (value) rememberToken(value);
    const body = TokenBody.safeParse(parseJson(response.text));
    if (!value || !body.success) {
      throw new OpenStackHttpError(
        'keystone',
        'POST',
        displayUrl(url),
        response.status,
        `keystone: POST ${displayUrl(url)} answered 201 without ${value ? 'a token body the enforcer understands' : 'an X-Subject-Token header'}; is OS_AUTH_URL really Keystone v3?`,
      );
    }
    const t = body.data.token;
    const expiresAt = Date.parse(t.expires_at);
    const issuedAt = t.issued_at ? Date.parse(t.issued_at) : this.now();
    const margin = Math.min(TOKEN_RENEW_MARGIN_SECONDS * 1000, Math.max(0, (expiresAt - issuedAt) / 2));
    this.log.debug({ scope, userId: t.user.id, projectId: t.project?.id, expiresAt: t.expires_at }, 'keystone token issued');
    return {
      value,
      scope,
      expiresAt,
      renewAt: expiresAt - margin,
      userId: t.user.id,
      ...(t.project ? { projectId: t.project.id } : {}),
      roles: t.roles.map((r) => r.name),
      catalog: t.catalog,
    };
  }

  private authError(scope: Scope, response: HttpResponse): Error {
    const { identity, project } = this.credentials;
    const who =
      identity.method === 'password'
        ? `the password of user ${'id' in identity.user ? `id ${identity.user.id}` : `'${identity.user.name}' (domain ${domainText(identity.user.domain)})`}`
        : `application credential ${identity.id}`;
    const on =
      identity.method === 'application_credential'
        ? 'its own project'
        : scope === 'system'
          ? 'system scope all'
          : project && ('id' in project ? `project id ${project.id}` : `project '${project.name}' (domain ${domainText(project.domain)})`);
    const check =
      identity.method === 'password'
        ? 'Check OS_USERNAME / OS_USER_ID, OS_PASSWORD and OS_USER_DOMAIN_NAME; Keystone also answers 401 when the user has no role on that scope ' +
          (scope === 'system' ? '(openstack role add --system all --user <user> reader)' : '(openstack role add --project <project> --user <user> admin)')
        : 'Check OS_APPLICATION_CREDENTIAL_ID and OS_APPLICATION_CREDENTIAL_SECRET, and that the credential has not expired or been deleted';
    const message = `keystone: ${displayUrl(this.credentials.authUrl)} refused ${who} for a token on ${on}: ${response.status} ${this.detail(response)}. ${response.status === 401 ? check : 'Check the OS_* settings'}`;
    return new KeystoneAuthError(response.status, scope, message);
  }

  /** Keystone's own error message, scrubbed of the identity's secrets (Keystone may echo input). */
  private detail(response: HttpResponse): string {
    let text: string;
    try {
      const body = JSON.parse(response.text) as { error?: { message?: unknown } };
      text = typeof body.error?.message === 'string' ? body.error.message : response.text;
    } catch {
      text = response.text;
    }
    const { identity } = this.credentials;
    const secrets = [identity.method === 'password' ? identity.password : identity.secret, ...[...this.tokens.values()].map((t) => t.value)];
    // Scrub before cutting, so that a secret cut in half by the slice cannot leak its first part.
    return scrub(text, secrets).replace(/\s+/g, ' ').trim().slice(0, 300) || '(empty body)';
  }
}

function statusHint(status: number, scope: Scope): string {
  if (status === 401) return `; refused even with a freshly issued ${scope}-scoped token`;
  if (status === 403) return `; the ${scope}-scoped token lacks a role for it (the enforcer needs reader on system scope)`;
  return '';
}

function domainText(domain: { id: string } | { name: string }): string {
  return 'id' in domain ? `id ${domain.id}` : domain.name;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
