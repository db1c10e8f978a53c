import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createLogger } from '../../src/log.js';
import { loadCredentials } from '../../src/openstack/credentials.js';
import type { Credentials } from '../../src/openstack/identity.js';
import { KeystoneAuthError, OpenStackHttpError, OpenStackUnreachableError, ScopeUnavailableError } from '../../src/openstack/errors.js';
import { GlanceClient } from '../../src/openstack/glance.js';
import { backoffDelayMs, retryingTransport, type RetryPolicy } from '../../src/openstack/http.js';
import { KeystoneClient } from '../../src/openstack/keystone.js';

/*
 * Retry, renewal and paging policy against a local node:http server on 127.0.0.1 that plays
 * Keystone and Glance from scripted answers. No lab needed.
 */

const PASSWORD = 'pw-Sup3r-S3cret-7f1c';
const quiet = createLogger('silent');
const fast: RetryPolicy = { attempts: 4, baseDelayMs: 1, maxDelayMs: 2, timeoutMs: 2_000 };

interface Seen {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}
type Answer = { status: number; headers?: Record<string, string>; body?: unknown } | 'hang' | 'stall' | 'reset';

interface FakeServer {
  url: string;
  seen: Seen[];
  close(): Promise<void>;
}

const servers: FakeServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function fakeServer(answer: (req: Seen) => Answer): Promise<FakeServer> {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const s: Seen = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString() };
      seen.push(s);
      const a = answer(s);
      if (a === 'hang') return;
      if (a === 'stall') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"images": [');
        return;
      }
      if (a === 'reset') {
        req.socket.destroy();
        return;
      }
      const body = a.body === undefined ? '' : typeof a.body === 'string' ? a.body : JSON.stringify(a.body);
      res.writeHead(a.status, { 'content-type': 'application/json', ...a.headers });
      res.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const fake: FakeServer = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  servers.push(fake);
  return fake;
}

function scripted(statuses: Answer[]): (req: Seen) => Answer {
  let i = 0;
  return () => statuses[Math.min(i++, statuses.length - 1)]!;
}

describe('backoff', () => {
  it('doubles its ceiling per retry up to the maximum, and draws below it (full jitter)', () => {
    const policy: RetryPolicy = { attempts: 8, baseDelayMs: 250, maxDelayMs: 4_000, timeoutMs: 1 };
    const ceilings = [1, 2, 3, 4, 5, 6].map((retry) => backoffDelayMs(retry, policy, () => 0.999999));
    expect(ceilings).toEqual([249, 499, 999, 1999, 3999, 3999]);
    expect(backoffDelayMs(3, policy, () => 0)).toBe(0);
  });
});

describe('a retrying transport', () => {
  function transport(sleeps: number[] = []) {
    return retryingTransport({ service: 'glance', policy: fast, log: quiet, sleep: async (ms) => sleeps.push(ms) });
  }

  it('retries 500 and 503 until an answer comes', async () => {
    const server = await fakeServer(scripted([{ status: 500 }, { status: 503 }, { status: 200, body: { ok: true } }]));
    const sleeps: number[] = [];
    const res = await transport(sleeps)({ method: 'GET', url: `${server.url}/v2/images` });
    expect(res.status).toBe(200);
    expect(server.seen).toHaveLength(3);
    expect(sleeps).toHaveLength(2);
  });

  it('gives the last 5xx back after the last attempt', async () => {
    const server = await fakeServer(scripted([{ status: 502 }]));
    const res = await transport()({ method: 'GET', url: `${server.url}/x` });
    expect(res.status).toBe(502);
    expect(server.seen).toHaveLength(fast.attempts);
  });

  it.each([400, 401, 403, 404, 409, 413, 429])('never repeats a %i', async (status) => {
    const server = await fakeServer(scripted([{ status }, { status: 200 }]));
    const res = await transport()({ method: 'DELETE', url: `${server.url}/v2/images/x` });
    expect(res.status).toBe(status);
    expect(server.seen).toHaveLength(1);
  });

  it('retries a dropped connection', async () => {
    const server = await fakeServer(scripted(['reset', { status: 204 }]));
    const res = await transport()({ method: 'DELETE', url: `${server.url}/v2/images/x` });
    expect(res.status).toBe(204);
    expect(server.seen).toHaveLength(2);
  });

  it('gives up on a refused port with an error naming the URL and the setting to check', async () => {
    const server = await fakeServer(scripted([{ status: 200 }]));
    await server.close();
    const sleeps: number[] = [];
    const call = retryingTransport({ service: 'keystone', policy: fast, log: quiet, sleep: async (ms) => sleeps.push(ms) });
    const error = await call({ method: 'POST', url: `${server.url}/v3/auth/tokens` }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenStackUnreachableError);
    expect((error as Error).message).toMatch(
      /^keystone: POST http:\/\/127\.0\.0\.1:\d+\/v3\/auth\/tokens got no answer after 4 attempts \(last: connect ECONNREFUSED 127\.0\.0\.1:\d+\)\. Check that OS_AUTH_URL is reachable/,
    );
    expect((error as Error).cause).toMatchObject({ code: 'ECONNREFUSED' });
    expect(sleeps).toHaveLength(fast.attempts - 1);
  });

  it('times out a server that never answers', async () => {
    const server = await fakeServer(() => 'hang');
    const call = retryingTransport({ service: 'glance', policy: { ...fast, attempts: 2, timeoutMs: 100 }, log: quiet, sleep: async () => {} });
    const started = Date.now();
    const error = await call({ method: 'GET', url: `${server.url}/v2/images` }).catch((e: unknown) => e);
    expect((error as Error).message).toContain('(last: timed out after 100 ms)');
    expect(server.seen).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('times out a body that stops half way', async () => {
    const server = await fakeServer(scripted(['stall', { status: 200, body: { images: [] } }]));
    const call = retryingTransport({ service: 'glance', policy: { ...fast, timeoutMs: 100 }, log: quiet, sleep: async () => {} });
    const res = await call({ method: 'GET', url: `${server.url}/v2/images` });
    expect(res).toMatchObject({ status: 200, text: '{"images":[]}' });
    expect(server.seen).toHaveLength(2);
  });
});

/** A fake Keystone (auth, catalog, limits) and Glance on one port. */
async function fakeCloud(options: { catalogImageUrl?: (base: string) => string; tokenLifetimeMs?: number } = {}) {
  let issued = 0;
  const revoked = new Set<string>();
  const state = {
    authAnswers: [] as Answer[],
    limitsAnswers: [] as Answer[],
    glanceAnswers: [] as Answer[],
    images: [] as Record<string, unknown>[],
    pageSize: 2,
    issued: () => issued,
    revoke: (token: string) => revoked.add(token),
    revokeAll: () => {
      for (let i = 1; i <= issued + 10; i++) revoked.add(`tok-${i}`);
    },
  };
  const server = await fakeServer((req) => {
    const base = server_url;
    if (req.method === 'POST' && req.path === '/v3/auth/tokens') {
      const scripted = state.authAnswers.shift();
      if (scripted) return scripted;
      issued++;
      const body = JSON.parse(req.body) as { auth: { scope?: { system?: unknown; project?: unknown } } };
      const now = Date.now();
      return {
        status: 201,
        headers: { 'x-subject-token': `tok-${issued}` },
        body: {
          token: {
            issued_at: new Date(now).toISOString(),
            expires_at: new Date(now + (options.tokenLifetimeMs ?? 3_600_000)).toISOString(),
            user: { id: 'u-enforcer', name: 'enforcer' },
            ...(body.auth.scope?.system ? { system: { all: true } } : { project: { id: 'p-service', name: 'service' } }),
            roles: [{ name: body.auth.scope?.system ? 'reader' : 'admin' }],
            catalog: [
              {
                id: 'svc-image',
                type: 'image',
                name: 'glance',
                endpoints: [
                  { id: 'e1', interface: 'public', region_id: 'RegionOne', url: options.catalogImageUrl?.(base) ?? base },
                  { id: 'e2', interface: 'internal', region_id: 'RegionOne', url: `${base}/internal` },
                  { id: 'e3', interface: 'public', region_id: 'RegionTwo', url: 'http://elsewhere:9292' },
                ],
              },
            ],
          },
        },
      };
    }
    const token = String(req.headers['x-auth-token'] ?? '');
    if (!token || revoked.has(token)) return { status: 401, body: { error: { code: 401, message: 'The request you have made requires authentication.' } } };
    if (req.path.startsWith('/v3/limits')) return state.limitsAnswers.shift() ?? { status: 200, body: { limits: [] } };
    if (req.path.startsWith('/v2/images')) {
      const scripted = state.glanceAnswers.shift();
      if (scripted) return scripted;
      const u = new URL(req.path, base);
      const hidden = u.searchParams.get('os_hidden') === 'true';
      const matching = state.images.filter((i) => Boolean(i.os_hidden) === hidden && i.owner === u.searchParams.get('owner'));
      const marker = u.searchParams.get('marker');
      const start = marker ? matching.findIndex((i) => i.id === marker) + 1 : 0;
      const page = matching.slice(start, start + state.pageSize);
      const full = page.length === state.pageSize;
      return {
        status: 200,
        body: { images: page, ...(full ? { next: `/v2/images?${u.searchParams.toString().replace(/&?marker=[^&]*/, '')}&marker=${page.at(-1)!.id}` } : {}) },
      };
    }
    return { status: 404 };
  });
  const server_url = server.url;
  return { server, state };
}

function credentialsFor(url: string, extra: Record<string, string> = {}): Credentials {
  return loadCredentials(
    {
      OS_AUTH_URL: `${url}/v3`,
      OS_USERNAME: 'enforcer',
      OS_PASSWORD: PASSWORD,
      OS_USER_DOMAIN_NAME: 'Default',
      OS_PROJECT_NAME: 'service',
      OS_PROJECT_DOMAIN_NAME: 'Default',
      OS_SYSTEM_SCOPE: 'all',
      OS_REGION_NAME: 'RegionOne',
      ...extra,
    },
    { searchDirs: [] },
  );
}

const LimitList = z.object({ limits: z.array(z.unknown()) });

describe('the Keystone client', () => {
  it('reuses one token per scope, and asks once when many ask at the same time', async () => {
    const { server, state } = await fakeCloud();
    const keystone = new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast });
    const tokens = await Promise.all([keystone.token('system'), keystone.token('system'), keystone.token('system')]);
    expect(new Set(tokens.map((t) => t.value)).size).toBe(1);
    await keystone.getJson('system', '/limits', LimitList);
    await keystone.getJson('system', '/limits', LimitList);
    const project = await keystone.token('project');
    expect(project).toMatchObject({ scope: 'project', projectId: 'p-service', roles: ['admin'] });
    expect(state.issued()).toBe(2);
    const authBodies = server.seen.filter((s) => s.path === '/v3/auth/tokens').map((s) => JSON.parse(s.body) as { auth: { scope: unknown } });
    expect(authBodies.map((b) => b.auth.scope)).toEqual([{ system: { all: true } }, { project: { name: 'service', domain: { name: 'Default' } } }]);
  });

  it('renews a token shortly before it expires', async () => {
    const { server, state } = await fakeCloud();
    let now = Date.now();
    const keystone = new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast, now: () => now });
    const first = await keystone.token('system');
    now = first.expiresAt - 5 * 60_000;
    expect((await keystone.token('system')).value).toBe(first.value);
    now = first.expiresAt - 60_000;
    expect((await keystone.token('system')).value).not.toBe(first.value);
    expect(state.issued()).toBe(2);
  });

  it('renews a short-lived token at half its life', async () => {
    const { server } = await fakeCloud({ tokenLifetimeMs: 60_000 });
    const keystone = new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast });
    const t = await keystone.token('system');
    expect(t.expiresAt - t.renewAt).toBeGreaterThanOrEqual(29_000);
    expect(t.expiresAt - t.renewAt).toBeLessThanOrEqual(31_000);
  });

  it('renews once on a 401 and carries on', async () => {
    const { server, state } = await fakeCloud();
    const keystone = new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast });
    const before = await keystone.token('system');
    state.revoke(before.value);
    await keystone.getJson('system', '/limits', LimitList);
    expect((await keystone.token('system')).value).not.toBe(before.value);
    expect(server.seen.filter((s) => s.path === '/v3/limits').map((s) => s.headers['x-auth-token'])).toEqual([before.value, 'tok-2']);
  });

  it('renews only once: a second 401 is an error', async () => {
    const { server, state } = await fakeCloud();
    const keystone = new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast });
    state.revokeAll();
    const error = await keystone.getJson('system', '/limits', LimitList).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenStackHttpError);
    expect((error as OpenStackHttpError).status).toBe(401);
    expect(server.seen.filter((s) => s.path === '/v3/limits')).toHaveLength(2);
    expect(state.issued()).toBe(2);
  });

  it('retries Keystone when it is briefly down', async () => {
    const { server, state } = await fakeCloud();
    state.authAnswers.push({ status: 503 }, 'reset');
    const keystone = new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast, sleep: async () => {} });
    await expect(keystone.token('project')).resolves.toMatchObject({ value: 'tok-1' });
    expect(server.seen).toHaveLength(3);
  });

  it('fails fast on a wrong password, and neither the error nor the log shows it', async () => {
    const { server, state } = await fakeCloud();
    // Keystone does not echo passwords today; the client must stay safe if some version or proxy does.
    state.authAnswers.push({ status: 401, body: { error: { code: 401, message: `Invalid password '${PASSWORD}' for user enforcer` } } });
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const keystone = new KeystoneClient(credentialsFor(server.url), { log: createLogger('trace', sink), retry: fast });
    const error = await keystone.token('system').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeystoneAuthError);
    const message = (error as Error).message;
    expect(message).toMatch(
      /^keystone: http:\/\/127\.0\.0\.1:\d+\/v3 refused the password of user 'enforcer' \(domain Default\) for a token on system scope all: 401 /,
    );
    expect(message).toContain('Check OS_USERNAME / OS_USER_ID, OS_PASSWORD and OS_USER_DOMAIN_NAME');
    expect(message).toContain('openstack role add --system all --user <user> reader');
    expect(message).not.toContain(PASSWORD);
    expect(lines.join('')).not.toContain(PASSWORD);
    expect(server.seen).toHaveLength(1);
  });

  it('says which token an application credential cannot give, without calling Keystone', async () => {
    const { server } = await fakeCloud();
    const keystone = new KeystoneClient(
      loadCredentials(
        { OS_AUTH_URL: `${server.url}/v3`, OS_APPLICATION_CREDENTIAL_ID: 'ac-1', OS_APPLICATION_CREDENTIAL_SECRET: 'shh-secret-123' },
        { searchDirs: [] },
      ),
      { log: quiet, retry: fast },
    );
    const error = await keystone.token('system').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ScopeUnavailableError);
    expect((error as Error).message).toContain('application credentials are bound to the project they were created in');
    expect(server.seen).toHaveLength(0);
    await keystone.token('project');
    expect(JSON.parse(server.seen[0]!.body)).toEqual({
      auth: { identity: { methods: ['application_credential'], application_credential: { id: 'ac-1', secret: 'shh-secret-123' } } },
    });
  });

  it('finds the image endpoint for the interface and region asked for', async () => {
    const { server } = await fakeCloud();
    const internal = new KeystoneClient(credentialsFor(server.url, { OS_INTERFACE: 'internalURL' }), { log: quiet, retry: fast });
    await expect(internal.endpoint('image')).resolves.toEqual({ url: `${server.url}/internal`, serviceId: 'svc-image', regionId: 'RegionOne' });
    const nowhere = new KeystoneClient(credentialsFor(server.url, { OS_REGION_NAME: 'RegionThree' }), { log: quiet, retry: fast });
    await expect(nowhere.endpoint('image')).rejects.toThrow(
      "catalog: no 'image' endpoint with interface 'public' in region 'RegionThree'; it offers public/RegionOne, internal/RegionOne, public/RegionTwo: set OS_INTERFACE and OS_REGION_NAME to one of those, or set GLANCE_URL",
    );
  });
});

function image(id: string, extra: Record<string, unknown> = {}) {
  return {
    id,
    name: id,
    owner: 'p-demo',
    status: 'active',
    size: 11,
    created_at: '2026-11-26T20:43:02Z',
    updated_at: '2026-11-26T20:43:02Z',
    protected: false,
    visibility: 'shared',
    os_hidden: false,
    disk_format: 'raw',
    ...extra,
  };
}

describe('the Glance client', () => {
  it('lists every page, hidden images included, with visibility=all', async () => {
    const { server, state } = await fakeCloud();
    state.images = [
      image('a'),
      image('b', { visibility: 'community' }),
      image('c', { status: 'queued', size: null }),
      image('h', { os_hidden: true }),
      image('x', { owner: 'p-other' }),
    ];
    const glance = new GlanceClient(new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast }), { log: quiet });
    const ids: string[] = [];
    for await (const i of glance.listImages({ owner: 'p-demo', limit: 2 })) ids.push(i.id);
    expect(ids).toEqual(['a', 'b', 'c', 'h']);
    const listings = server.seen.filter((s) => s.path.startsWith('/v2/images')).map((s) => Object.fromEntries(new URL(s.path, server.url).searchParams));
    expect(listings).toEqual([
      { owner: 'p-demo', visibility: 'all', os_hidden: 'false', limit: '2' },
      { owner: 'p-demo', visibility: 'all', os_hidden: 'false', limit: '2', marker: 'b' },
      { owner: 'p-demo', visibility: 'all', os_hidden: 'true', limit: '2' },
    ]);
    expect(server.seen.filter((s) => s.path.startsWith('/v2/')).every((s) => s.headers['x-auth-token'] === 'tok-1')).toBe(true);
  });

  it('leaves out a listed image it cannot read, says which, and lists the rest', async () => {
    const { server, state } = await fakeCloud();
    state.images = [image('a'), image('odd', { status: 'melted' }), image('b', { created_at: 17 })];
    const glance = new GlanceClient(new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast }), { log: quiet });
    const ids: string[] = [];
    const unreadable: string[] = [];
    for await (const i of glance.listImages({ owner: 'p-demo', limit: 10, onUnreadable: (id) => unreadable.push(id) })) ids.push(i.id);
    expect(ids).toEqual(['a']);
    expect(unreadable).toEqual(['odd', 'b']);
  });

  it('maps delete answers to outcomes', async () => {
    const { server, state } = await fakeCloud();
    const glance = new GlanceClient(new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast, sleep: async () => {} }), { log: quiet });
    state.glanceAnswers.push(
      { status: 204 },
      { status: 404 },
      { status: 403, body: { message: 'Image i-1 is protected and cannot be deleted.<br /><br />\n\n\n', code: '403 Forbidden', title: 'Forbidden' } },
      { status: 409, body: { message: 'Image i-1 could not be deleted because it is in use: x<br /><br />\n\n\n' } },
      { status: 400, body: { message: 'Image status transition from deleted to deleted is not allowed<br /><br />\n\n\n' } },
      { status: 500 },
      { status: 500 },
      { status: 500 },
      { status: 500 },
    );
    await expect(glance.deleteImage('i-1')).resolves.toEqual({ result: 'deleted' });
    await expect(glance.deleteImage('i-1')).resolves.toEqual({ result: 'gone' });
    await expect(glance.deleteImage('i-1')).resolves.toEqual({ result: 'refused', status: 403, reason: 'Image i-1 is protected and cannot be deleted.' });
    await expect(glance.deleteImage('i-1')).resolves.toEqual({
      result: 'refused',
      status: 409,
      reason: 'Image i-1 could not be deleted because it is in use: x',
    });
    // Two DELETEs racing for one image: the loser's 400 means it is gone all the same.
    await expect(glance.deleteImage('i-1')).resolves.toEqual({ result: 'gone' });
    await expect(glance.deleteImage('i-1')).rejects.toThrow(/^glance: DELETE http:\/\/127\.0\.0\.1:\d+\/v2\/images\/i-1 answered 500/);
  });

  it('renews the project token once when Glance answers 401', async () => {
    const { server, state } = await fakeCloud();
    const keystone = new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast });
    const glance = new GlanceClient(keystone, { log: quiet });
    state.glanceAnswers.push({ status: 404 });
    expect(await glance.getImage('nope')).toBeNull();
    state.revoke('tok-1');
    state.glanceAnswers.push({ status: 200, body: image('i-2', { os_glance_importing_to_stores: 'file' }) });
    await expect(glance.getImage('i-2')).resolves.toMatchObject({ id: 'i-2', owner: 'p-demo', os_glance_importing_to_stores: 'file' });
    expect(server.seen.filter((s) => s.path.startsWith('/v2/')).map((s) => s.headers['x-auth-token'])).toEqual(['tok-1', 'tok-1', 'tok-2']);
  });

  it('takes Glance from the catalog, dropping a /v2 suffix, unless GLANCE_URL is set', async () => {
    const { server, state } = await fakeCloud({ catalogImageUrl: (base) => `${base}/v2/` });
    state.glanceAnswers.push({ status: 200, body: image('i-3') }, { status: 200, body: image('i-3') });
    const fromCatalog = new GlanceClient(new KeystoneClient(credentialsFor(server.url), { log: quiet, retry: fast }), { log: quiet });
    await fromCatalog.getImage('i-3');
    const overridden = new GlanceClient(new KeystoneClient(credentialsFor(server.url, { GLANCE_URL: `${server.url}/proxied/` }), { log: quiet, retry: fast }), {
      log: quiet,
    });
    await overridden.getImage('i-3').catch(() => undefined);
    expect(server.seen.filter((s) => !s.path.startsWith('/v3/')).map((s) => s.path)).toEqual(['/v2/images/i-3', '/proxied/v2/images/i-3']);
  });

  it('needs a project-scoped token and says so at construction', async () => {
    const keystone = new KeystoneClient(credentialsFor('http://127.0.0.1:9', { OS_PROJECT_NAME: '' }), { log: quiet });
    expect(() => new GlanceClient(keystone)).toThrow(/^glance: no project-scoped token: neither OS_PROJECT_NAME nor OS_PROJECT_ID is set/);
  });
});

// A throwaway CA and a certificate for IP 127.0.0.1 that it signed (openssl, valid until 2126).
// Test material only: nothing else trusts this CA.
const TEST_CA = `-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUATCKB8CjQJE7wxaCRy5obQjG5kwwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLZ3FlIHRlc3QgQ0EwIBcNMjYxMTI2MjA1NDIwWhgPMjEyNjEx
MDIyMDU0MjBaMBYxFDASBgNVBAMMC2dxZSB0ZXN0IENBMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEaYTbBr8wkZZL2Y4KfdWX2YfOGG9M3Si5WjVQSgo2x2RSJxx9
pfWWxviEIGEwnG1jfIgyOwRkWWktU5F6gjMvXqNjMGEwHQYDVR0OBBYEFDo6YBy3
o//2uHFrnKFbIHm4nWpOMB8GA1UdIwQYMBaAFDo6YBy3o//2uHFrnKFbIHm4nWpO
MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgIEMAoGCCqGSM49BAMCA0gA
MEUCIHXRFunPnwcdtuw7PAmgt9SJ0Q992qSbmRf+hwD/L5NnAiEA6Gcv2ZKMeHDV
c0++qIaKjYhZ8ikQNKvrOFt3DjxvWuk=
-----END CERTIFICATE-----
`;
const TEST_SERVER_CERT = `-----BEGIN CERTIFICATE-----
MIIBoDCCAUegAwIBAgIUfXFgeRBXATwHWHTEtCIpDnpx+G0wCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLZ3FlIHRlc3QgQ0EwIBcNMjYxMTI2MjA1NDIwWhgPMjEyNjEx
MDIyMDU0MjBaMBQxEjAQBgNVBAMMCTEyNy4wLjAuMTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABJzpnx6H2zXYlcN7vG74cQQJiKA6ved0d9ltD5KYuVnKXCb62C3V
Wh74nI8NDy0ulqNJMsyszlZihc0aJ/ApKLajczBxMA8GA1UdEQQIMAaHBH8AAAEw
CQYDVR0TBAIwADATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQUDrgedzWk
MHxmhCMSosx86I8cYrgwHwYDVR0jBBgwFoAUOjpgHLej//a4cWucoVsgebidak4w
CgYIKoZIzj0EAwIDRwAwRAIgAOsLTSNjFPxBGHVnQVtVU0UPA2SnBjVKEJrk1BqB
seQCIFsZEmZ+2j3JiHUctOdXDWVjYBHSE1AeF0xo2aW3yjAa
-----END CERTIFICATE-----
`;
const TEST_SERVER_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEKDxkobV9zmmRsfW
KddkGQcUIpyclajwr8lpUwZqqBahRANCAASc6Z8eh9s12JXDe7xu+HEECYigOr3n
dHfZbQ+SmLlZylwm+tgt1Voe+JyPDQ8tLpajSTLMrM5WYoXNGifwKSi2
-----END PRIVATE KEY-----
`;

describe('OS_CACERT', () => {
  async function tlsServer(): Promise<{ url: string; requests: () => number }> {
    let requests = 0;
    const server = https.createServer({ cert: TEST_SERVER_CERT, key: TEST_SERVER_KEY }, (_req, res) => {
      requests++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    servers.push({
      url: '',
      seen: [],
      close: () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    });
    return { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, requests: () => requests };
  }

  it('is what makes a private CA trusted', async () => {
    const server = await tlsServer();
    const call = retryingTransport({ service: 'keystone', policy: fast, log: quiet, ca: TEST_CA });
    await expect(call({ method: 'GET', url: `${server.url}/v3` })).resolves.toMatchObject({ status: 200 });
  });

  it('without it, an untrusted certificate fails at once, not after every retry, and names the fix', async () => {
    const server = await tlsServer();
    const sleeps: number[] = [];
    const call = retryingTransport({ service: 'keystone', policy: fast, log: quiet, sleep: async (ms) => sleeps.push(ms) });
    const error = await call({ method: 'GET', url: `${server.url}/v3` }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenStackUnreachableError);
    expect((error as Error).message).toMatch(/the server's certificate is not trusted \(UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|UNABLE_TO_GET_ISSUER/);
    expect((error as Error).message).toContain('Set OS_CACERT to the PEM file of the CA that signed it.');
    expect(sleeps).toEqual([]);
    expect(server.requests()).toBe(0);
  });

  it('reaches the clients through loadCredentials', async () => {
    const server = await tlsServer();
    const dir = mkdtempSync(path.join(tmpdir(), 'gqe-openstack-ca-'));
    try {
      writeFileSync(path.join(dir, 'ca.pem'), TEST_CA);
      const keystone = new KeystoneClient(credentialsFor(server.url, { OS_CACERT: path.join(dir, 'ca.pem') }), { log: quiet, retry: fast });
      // The fake answers {} to everything: getting as far as "expected 201" proves TLS worked.
      await expect(keystone.token('system')).rejects.toThrow(
        /^keystone: POST https:\/\/127\.0\.0\.1:\d+\/v3\/auth\/tokens answered 200: \{\}; expected 201 Created: is OS_AUTH_URL really Keystone v3\?$/,
      );
      expect(server.requests()).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
