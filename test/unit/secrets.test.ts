import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { forgetSecrets } from '../../src/redact.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { osloNotification } from '../../src/transport/notifier.js';

/*
 * An operator's bad day: Keystone and Glance (local node:http servers on 127.0.0.1) echo the
 * enforcer's token and password back in their error bodies, raw, JSON-escaped, twice escaped,
 * URL-encoded and in HTML, and the password has a quote and a backslash. Nothing of either may
 * reach any output channel: the log, an error, the audit table, the CLI's output, a notification.
 */

/** Distinctive cores: whatever escaping surrounds them, they must never appear. */
const PASSWORD_CORE = 'S3cr3tCore';
const TOKEN_CORE = 'T0kenCore';
const PASSWORD = `Xy"${PASSWORD_CORE}\\end/,@`;
/** Not Fernet-shaped: only the remembered-token scrub can catch it where it is not named. */
const TOKEN = `tok-${TOKEN_CORE}-0123456789abcdef`;
const PROJECT = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
const ENFORCER_PROJECT = 'e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0';

/** Every way a server could echo a value back. */
function echoes(value: string): string {
  const json = JSON.stringify(value);
  return [
    `raw ${value} |`,
    `json ${json} |`,
    `twice ${JSON.stringify(json)} |`,
    `url ${encodeURIComponent(value)} |`,
    `html ${value.replace(/&/g, '&amp;').replace(/"/g, '&quot;')} |`,
  ].join(' ');
}

function expectClean(channel: string, text: string): void {
  expect(text, `${channel} leaks the password`).not.toContain(PASSWORD_CORE);
  expect(text, `${channel} leaks the token`).not.toContain(TOKEN_CORE);
}

interface Cloud {
  url: string;
  deletes: string[];
  glanceListing: 'ok' | 'fail';
  /** `fail`: every limits read answers 500, echoing the token and the password. */
  limits: 'ok' | 'fail';
  close(): Promise<void>;
}

/** Keystone and Glance in one server: tokens for the right password, echoes everywhere else. */
async function fakeCloud(): Promise<Cloud> {
  const deletes: string[] = [];
  const cloud = { glanceListing: 'ok', limits: 'ok' } as Cloud;
  const IMAGES = [1, 2, 3].map((i) => ({
    id: `0000000${i}-0000-4000-8000-00000000000${i}`,
    name: `img-${i}`,
    owner: PROJECT,
    status: 'queued',
    size: null,
    created_at: `2026-11-26T20:30:0${i}Z`,
    updated_at: `2026-11-26T20:30:0${i}Z`,
    protected: false,
    visibility: 'private',
  }));
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...headers });
        res.end(typeof payload === 'string' ? payload : JSON.stringify(payload));
      };
      const path = req.url ?? '';
      const token = String(req.headers['x-auth-token'] ?? '');
      if (req.method === 'POST' && path === '/v3/auth/tokens') {
        const auth = JSON.parse(body) as { auth: { identity: { password: { user: { password: string } } }; scope?: { system?: unknown } } };
        if (auth.auth.identity.password.user.password !== PASSWORD) {
          // Keystone echoing what it was sent, as a misconfigured proxy or debug mode may.
          return send(401, {
            error: {
              code: 401,
              title: 'Unauthorized',
              message: `The request you have made requires authentication. ${echoes(auth.auth.identity.password.user.password)}`,
            },
          });
        }
        const system = auth.auth.scope?.system !== undefined;
        return send(
          201,
          {
            token: {
              expires_at: new Date(Date.now() + 3_600_000).toISOString(),
              user: { id: 'enforcer-user' },
              ...(system ? { system: { all: true } } : { project: { id: ENFORCER_PROJECT } }),
              roles: [{ name: system ? 'reader' : 'admin' }],
              catalog: [
                {
                  id: 'svc-image',
                  type: 'image',
                  name: 'glance',
                  endpoints: [
                    { id: 'e1', interface: 'public', region_id: 'RegionOne', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/glance` },
                  ],
                },
              ],
            },
          },
          { 'x-subject-token': system ? `${TOKEN}-system` : TOKEN },
        );
      }
      if (cloud.limits === 'ok' && req.method === 'GET' && path.startsWith('/v3/registered_limits')) {
        const registered = [{ id: 'r1', service_id: 'svc-image', region_id: 'RegionOne', resource_name: 'image_count_total', default_limit: 1 }];
        return send(200, { registered_limits: registered, links: { self: path, next: null, previous: null } });
      }
      if (cloud.limits === 'ok' && req.method === 'GET' && path.startsWith('/v3/limits'))
        return send(200, { limits: [], links: { self: path, next: null, previous: null } });
      if (path.startsWith('/v3/')) {
        return send(500, {
          error: { code: 500, title: 'Internal Server Error', message: `limits backend failed for ${echoes(token)} and ${echoes(PASSWORD)}` },
        });
      }
      if (req.method === 'GET' && path.startsWith('/glance/v2/images?')) {
        if (cloud.glanceListing === 'fail')
          return send(500, `<html><body>proxy error: upstream said ${echoes(token)} / ${echoes(PASSWORD)}</body></html>`, { 'content-type': 'text/html' });
        const hidden = new URL(path, 'http://x').searchParams.get('os_hidden') === 'true';
        return send(200, { images: hidden ? [] : IMAGES });
      }
      if (req.method === 'GET' && path.startsWith('/glance/v2/images/')) {
        const image = IMAGES.find((i) => path.endsWith(`/${i.id}`));
        return image ? send(200, image) : send(404, { message: 'not found' });
      }
      if (req.method === 'DELETE' && path.startsWith('/glance/v2/images/')) {
        deletes.push(path);
        return send(403, {
          message: `Forbidden: X-Auth-Token: ${token} is not allowed; request carried ${echoes(token)} and ${echoes(PASSWORD)}<br /><br />`,
          code: '403 Forbidden',
          title: 'Forbidden',
        });
      }
      return send(404, { message: 'not found' });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(cloud, {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    deletes,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  });
}

const dir = mkdtempSync(join(tmpdir(), 'gqe-secrets-'));
let cloud: Cloud;
beforeAll(async () => {
  cloud = await fakeCloud();
});
afterAll(async () => {
  await cloud.close();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(() => forgetSecrets());

/** The CLI, with the process's stderr (where the JSON log goes) captured too. */
async function run(args: string[], env: Record<string, string>) {
  let stdout = '';
  let stderr = '';
  let log = '';
  const saved = { ...process.env };
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => {
    log += chunk.toString();
    return true;
  }) as typeof process.stderr.write;
  for (const k of Object.keys(process.env)) if (k.startsWith('OS_')) delete process.env[k];
  Object.assign(process.env, env);
  try {
    const code = await main(args, {
      stdout: (t) => {
        stdout += t;
      },
      stderr: (t) => {
        stderr += t;
      },
    }).catch((err: Error) => {
      stderr += `${err.name}: ${err.message}\n${err.stack ?? ''}`;
      return 99;
    });
    return { code, stdout, stderr, log };
  } finally {
    process.stderr.write = write;
    process.env = saved;
  }
}

function envFor(store: string, overrides: Record<string, string> = {}): Record<string, string> {
  return {
    OS_AUTH_URL: `${cloud.url}/v3`,
    OS_USERNAME: 'enforcer',
    OS_PASSWORD: PASSWORD,
    OS_USER_DOMAIN_NAME: 'Default',
    OS_PROJECT_NAME: 'admin',
    OS_PROJECT_DOMAIN_NAME: 'Default',
    OS_SYSTEM_SCOPE: 'all',
    GLANCE_URL: `${cloud.url}/glance`,
    QUOTA_LIMITS: 'image_count_total=1',
    STORE_URL: `sqlite://${store}`,
    LOG_LEVEL: 'debug',
    ...overrides,
  };
}

describe('no secret reaches any output channel, whatever Keystone and Glance echo', () => {
  it('reconcile and actions: Glance refuses the deletes echoing the token and the password', async () => {
    const store = join(dir, 'ledger.db');
    // Two passes at once below, as an operator would run them: no interval kept between them.
    const reconcile = await run(['reconcile'], envFor(store, { ENFORCE_INTERVAL_SECONDS: '0' }));
    expect(reconcile.stderr).toBe('');
    expect(reconcile.code).toBe(0);
    // The scenario really ran: Glance was asked to delete the 2 newest, and refused both.
    expect(cloud.deletes).toHaveLength(2);
    expect(reconcile.stdout).toMatch(/2 not deletable/);
    expect(reconcile.stdout).toContain('[REDACTED]');
    for (const channel of ['stdout', 'stderr', 'log'] as const) expectClean(`reconcile ${channel}`, reconcile[channel]);
    expect(reconcile.log).toMatch(/keystone|limits/i);

    const json = await run(['reconcile', '--json', '--dry-run'], envFor(store, { ENFORCE_INTERVAL_SECONDS: '0' }));
    expectClean('reconcile --json', json.stdout + json.stderr + json.log);

    for (const args of [['actions'], ['actions', '--json']]) {
      const out = await run(args, envFor(store));
      expect(out.code).toBe(0);
      expect(out.stdout).toMatch(/not-deletable/);
      expectClean(`${args.join(' ')} output`, out.stdout + out.stderr + out.log);
    }

    // The audit table itself.
    const ledger = SqliteStore.open(store);
    const audit = await ledger.actions();
    await ledger.close();
    expect(audit.map((a) => a.action)).toEqual(['not-deletable', 'not-deletable', 'would-delete', 'would-delete']);
    expectClean('audit table', JSON.stringify(audit));

    // The notification `consume` publishes for each action (src/commands/consume.ts builds it from
    // the audited record); and one built from raw server text, in a fresh process's memory.
    const notification = osloNotification('quota_enforcer.image.not_deletable', 'INFO', { reason: audit[0]!.reason }, Date.now());
    expectClean('notification', notification);
  });

  it('a limits outage echoing the token and the password deletes nothing, and no output shows either', async () => {
    cloud.limits = 'fail';
    try {
      const before = cloud.deletes.length;
      const out = await run(['reconcile'], envFor(join(dir, 'outage.db')));
      expect(cloud.deletes).toHaveLength(before);
      expect(out.stderr + out.log).toMatch(/limits of \S+ unavailable/);
      for (const channel of ['stdout', 'stderr', 'log'] as const) expectClean(`reconcile during a limits outage, ${channel}`, out[channel]);
    } finally {
      cloud.limits = 'ok';
    }
  });

  it('a notification payload quoting a server is scrubbed of every secret the process holds', async () => {
    await run(['status'], envFor(join(dir, 'status.db')));
    // Nothing remembered survives the run above (afterEach forgets); remember as a run would.
    const { rememberSecrets, rememberToken } = await import('../../src/redact.js');
    rememberSecrets(PASSWORD);
    rememberToken(TOKEN);
    const body = osloNotification('quota_enforcer.image.not_deletable', 'INFO', { reason: `Glance said ${echoes(TOKEN)} ${echoes(PASSWORD)}` }, Date.now());
    expectClean('notification', body);
    expect(JSON.parse(JSON.parse(body)['oslo.message']).payload.reason).toMatch(/^Glance said raw \[REDACTED\]/);
  });

  it('errors: a failing Glance listing and a refused password echo their input; the CLI shows neither', async () => {
    cloud.glanceListing = 'fail';
    try {
      const failed = await run(['reconcile'], envFor(join(dir, 'fail.db')));
      expect(failed.code).toBe(1);
      expect(failed.stderr).toMatch(/glance: GET .* answered 500/);
      expectClean('glance error', failed.stdout + failed.stderr + failed.log);
    } finally {
      cloud.glanceListing = 'ok';
    }
    const wrong = `Wr0ng"${PASSWORD_CORE}\\x`;
    const refused = await run(['reconcile'], envFor(join(dir, 'refused.db'), { OS_PASSWORD: wrong }));
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/keystone: .* refused the password of user 'enforcer'/);
    expectClean('keystone error', refused.stdout + refused.stderr + refused.log);
  });

  it('a STORE_URL or TRANSPORT_URL whose password has unencoded delimiters is never printed', async () => {
    const store = await run(['status'], { STORE_URL: `mysql://gqe:${PASSWORD}@db.example.com/x` });
    expect(store.code).toBe(2);
    expect(store.stderr).toMatch(/^STORE_URL: unsupported store 'mysql:\/\/gqe:\*\*\*@db\.example\.com\/x'/);
    expectClean('STORE_URL error', store.stderr + store.log);
  });
});
