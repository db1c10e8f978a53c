import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/*
 * The real lab (test/e2e/lab.sh): Keystone 22 and Glance 25 from Debian's packages on loopback.
 * `npm run test:e2e` evals `lab.sh env`; without it every test fails with what to run, never skips.
 */

export function labEnv(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: the end-to-end tests need the lab. Run: npm run lab:up && npm run test:e2e`);
  }
  return value;
}

export interface Lab {
  authUrl: string;
  region: string;
  glanceUrl: string;
  oracleUrl: string;
  passwords: { admin: string; demo: string; enforcer: string };
}

export function lab(): Lab {
  return {
    authUrl: labEnv('OS_AUTH_URL').replace(/\/+$/, ''),
    region: labEnv('OS_REGION_NAME'),
    glanceUrl: labEnv('LAB_GLANCE_URL').replace(/\/+$/, ''),
    oracleUrl: labEnv('LAB_GLANCE_ORACLE_URL').replace(/\/+$/, ''),
    passwords: { admin: labEnv('LAB_ADMIN_PASSWORD'), demo: labEnv('LAB_DEMO_PASSWORD'), enforcer: labEnv('LAB_ENFORCER_PASSWORD') },
  };
}

async function call(method: string, url: string, token: string | undefined, body?: unknown, headers: Record<string, string> = {}) {
  let response: Response;
  try {
    response = await fetch(url, {
      method,
      headers: {
        accept: 'application/json',
        ...(token ? { 'x-auth-token': token } : {}),
        ...(body !== undefined && !(body instanceof Uint8Array) ? { 'content-type': 'application/json' } : {}),
        ...headers,
      },
      ...(body !== undefined ? { body: body instanceof Uint8Array ? body : JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(30_000),
    });
  } catch (err) {
    throw new Error(
      `${method} ${url}: unreachable (${(err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message}); is the lab up? npm run lab:up`,
    );
  }
  const text = await response.text();
  return {
    status: response.status,
    headers: response.headers,
    json: text ? (JSON.parse(text.startsWith('{') || text.startsWith('[') ? text : 'null') as any) : null,
    text,
  };
}

async function expectStatus(what: string, r: { status: number; text: string }, ...ok: number[]) {
  if (!ok.includes(r.status)) throw new Error(`${what}: HTTP ${r.status}: ${r.text.slice(0, 300)}`);
}

export async function token(l: Lab, user: string, password: string, scope: { projectId: string } | 'system'): Promise<string> {
  const r = await call('POST', `${l.authUrl}/auth/tokens`, undefined, {
    auth: {
      identity: { methods: ['password'], password: { user: { name: user, domain: { name: 'Default' }, password } } },
      scope: scope === 'system' ? { system: { all: true } } : { project: { id: scope.projectId } },
    },
  });
  await expectStatus(`token for ${user}`, r, 201);
  return r.headers.get('x-subject-token')!;
}

/**
 * A project of its own for one test, with the lab's `demo` user as member: no other test's images
 * or limits can leak in. `remove()` deletes its images, its limits and the project.
 */
export class TestProject {
  private constructor(
    readonly l: Lab,
    readonly id: string,
    readonly name: string,
    private readonly admin: string,
    private readonly memberToken: string,
    private readonly limitIds: string[] = [],
  ) {}

  static async create(l: Lab, label: string): Promise<TestProject> {
    const admin = await token(l, 'admin', l.passwords.admin, 'system');
    const name = `gqe-e2e-${label}-${randomUUID().slice(0, 8)}`;
    const p = await call('POST', `${l.authUrl}/projects`, admin, { project: { name, domain_id: 'default', enabled: true } });
    await expectStatus('create project', p, 201);
    const id = p.json.project.id as string;
    const users = await call('GET', `${l.authUrl}/users?name=demo`, admin);
    const roles = await call('GET', `${l.authUrl}/roles?name=member`, admin);
    const assign = await call('PUT', `${l.authUrl}/projects/${id}/users/${users.json.users[0].id}/roles/${roles.json.roles[0].id}`, admin);
    await expectStatus('assign member', assign, 204);
    const member = await token(l, 'demo', l.passwords.demo, { projectId: id });
    return new TestProject(l, id, name, admin, member);
  }

  /** A Keystone project limit for Glance's service in the lab's region. */
  async setLimit(resource: string, value: number): Promise<void> {
    const services = await call('GET', `${this.l.authUrl}/services?type=image`, this.admin);
    const r = await call('POST', `${this.l.authUrl}/limits`, this.admin, {
      limits: [{ service_id: services.json.services[0].id, project_id: this.id, region_id: this.l.region, resource_name: resource, resource_limit: value }],
    });
    await expectStatus('create limit', r, 201);
    this.limitIds.push(r.json.limits[0].id);
  }

  /** POST /v2/images as the project's member: a queued image. */
  async createImage(name: string, extra: Record<string, unknown> = {}): Promise<string> {
    const r = await call('POST', `${this.l.glanceUrl}/v2/images`, this.memberToken, { name, disk_format: 'raw', container_format: 'bare', ...extra });
    await expectStatus('create image', r, 201);
    return r.json.id;
  }

  /** POST /v2/images (or `path`, verbatim) as the project's member at `baseUrl` (Glance, or a proxy in front of it). */
  async createAt(
    baseUrl: string,
    name: string,
    path = '/v2/images',
    headers: Record<string, string> = {},
  ): Promise<{ status: number; json: any; text: string }> {
    return call('POST', `${baseUrl}${path}`, this.memberToken, { name, disk_format: 'raw', container_format: 'bare' }, headers);
  }

  /**
   * `n` creates at once, as a flood looks, each with `extra` in its body (what else a tenant puts
   * in a create: `protected`, megabytes of properties); returns each image with its created_at.
   */
  async flood(n: number, prefix = 'flood', extra: Record<string, unknown> = {}): Promise<{ id: string; created_at: string }[]> {
    return Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const r = await call('POST', `${this.l.glanceUrl}/v2/images`, this.memberToken, {
          name: `${prefix}-${i}`,
          disk_format: 'raw',
          container_format: 'bare',
          ...extra,
        });
        await expectStatus('create image', r, 201);
        return { id: r.json.id as string, created_at: r.json.created_at as string };
      }),
    );
  }

  async upload(id: string, bytes: number): Promise<void> {
    const r = await call('PUT', `${this.l.glanceUrl}/v2/images/${id}/file`, this.memberToken, new Uint8Array(bytes).fill(7), {
      'content-type': 'application/octet-stream',
    });
    await expectStatus('upload', r, 204);
  }

  /** The project's images as Glance lists them to its member, id -> status. */
  async images(): Promise<Map<string, string>> {
    const r = await call('GET', `${this.l.glanceUrl}/v2/images?owner=${this.id}&limit=1000`, this.memberToken);
    await expectStatus('list images', r, 200);
    return new Map((r.json.images as { id: string; status: string }[]).map((i) => [i.id, i.status]));
  }

  /** Glance's own count: the oracle glance-api with use_keystone_limits on. */
  async oracleUsage(): Promise<Record<string, number>> {
    const r = await call('GET', `${this.l.oracleUrl}/v2/info/usage`, this.memberToken);
    await expectStatus('oracle usage', r, 200);
    return Object.fromEntries(Object.entries(r.json.usage as Record<string, { usage: number }>).map(([k, v]) => [k, v.usage]));
  }

  /** The member's token (for a client that talks to Glance on its own, such as a bench). */
  get token(): string {
    return this.memberToken;
  }

  /** Deletes every image of the project (unprotecting it first). */
  async removeImages(): Promise<void> {
    for (const id of (await this.images().catch(() => new Map<string, string>())).keys()) {
      await call('PATCH', `${this.l.glanceUrl}/v2/images/${id}`, this.memberToken, [{ op: 'replace', path: '/protected', value: false }], {
        'content-type': 'application/openstack-images-v2.1-json-patch',
      });
      await call('DELETE', `${this.l.glanceUrl}/v2/images/${id}`, this.memberToken);
    }
  }

  async remove(): Promise<void> {
    await this.removeImages();
    for (const id of this.limitIds) await call('DELETE', `${this.l.authUrl}/limits/${id}`, this.admin);
    await call('DELETE', `${this.l.authUrl}/projects/${this.id}`, this.admin);
  }
}

const run = promisify(execFile);
const BIN = join(import.meta.dirname, '..', '..', '..', 'bin', 'glance-quota-enforcer.js');

/** The enforcer's identity in the lab, the way an operator would configure it. */
export function enforcerEnv(l: Lab, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const { PATH, HOME } = process.env;
  return {
    PATH,
    HOME,
    OS_AUTH_URL: l.authUrl,
    OS_USERNAME: 'enforcer',
    OS_PASSWORD: l.passwords.enforcer,
    OS_USER_DOMAIN_NAME: 'Default',
    OS_PROJECT_NAME: 'service',
    OS_PROJECT_DOMAIN_NAME: 'Default',
    OS_SYSTEM_SCOPE: 'all',
    OS_REGION_NAME: l.region,
    OS_INTERFACE: 'public',
    STORE_URL: `sqlite://${join(mkdtempSync(join(tmpdir(), 'gqe-e2e-')), 'ledger.db')}`,
    LOG_LEVEL: 'warn',
    ...extra,
  };
}

/** Runs the built CLI (as `npx glance-quota-enforcer` would) and returns its output. */
export async function cli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], { env, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}
