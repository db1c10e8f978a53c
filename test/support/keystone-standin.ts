import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ProjectLimit, RegisteredLimit } from '../../src/openstack/keystone-limits.js';

/**
 * A Keystone v3 stand-in on 127.0.0.1 that counts its calls: tokens, `GET /v3/registered_limits`
 * and `GET /v3/limits` with Keystone 22's filters (service_id, region_id, resource_name,
 * project_id, domain_id; exact match) and its truncation (`[unified_limit] list_limit`: the first
 * N items, `truncated: true`, no next link). For the tests and `bench:consume`, which need
 * thousands of projects' limits that the lab's Keystone should not be filled with.
 */
export interface KeystoneStandIn {
  /** OS_AUTH_URL, ending in /v3. */
  authUrl: string;
  /** The environment of an enforcer with a system-scoped reader identity on it. */
  env: NodeJS.ProcessEnv;
  serviceId: string;
  calls: { tokens: number; registeredLimits: number; limits: number; limitsOfOneProject: number };
  /** Calls to `GET /v3/projects` (listings) and `GET /v3/projects/{id}` (byId). */
  projectCalls: { listings: number; byId: number };
  /** What Keystone holds; change it between reads. */
  registered: RegisteredLimit[];
  limits: ProjectLimit[];
  /** Keystone's projects (`GET /v3/projects`, `GET /v3/projects/{id}`), cut at `listLimit` too. */
  projects: { id: string; name: string }[];
  /** `[unified_limit] list_limit`; unset: no truncation. */
  listLimit?: number;
  /** Serve pages of this size with a `links.next`, as a paginating Keystone would (Keystone 22 does not). */
  pageSize?: number;
  /** Where `links.next` points (default this server): to see the client refuse another host. */
  nextBase?: string;
  /** Answer 503 to everything, as a Keystone behind a load balancer with no backend. */
  down: boolean;
  resetCalls(): void;
  close(): Promise<void>;
}

export const STANDIN_SERVICE_ID = 'svc-image';

export const registeredLimit = (name: string, value: number, regionId = 'RegionOne', serviceId = STANDIN_SERVICE_ID): RegisteredLimit => ({
  id: `r-${serviceId}-${regionId}-${name}`,
  service_id: serviceId,
  region_id: regionId,
  resource_name: name,
  default_limit: value,
});

export const projectLimit = (projectId: string, name: string, value: number, regionId = 'RegionOne', serviceId = STANDIN_SERVICE_ID): ProjectLimit => ({
  id: `l-${serviceId}-${regionId}-${projectId}-${name}`,
  project_id: projectId,
  domain_id: null,
  service_id: serviceId,
  region_id: regionId,
  resource_name: name,
  resource_limit: value,
});

const FILTERS = ['service_id', 'region_id', 'resource_name', 'project_id', 'domain_id'] as const;

export async function keystoneStandIn(
  init: { registered?: RegisteredLimit[]; limits?: ProjectLimit[]; projects?: { id: string; name: string }[]; listLimit?: number } = {},
): Promise<KeystoneStandIn> {
  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: String(error) } }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const token = `standin-${randomUUID()}`;
  const standIn: KeystoneStandIn = {
    authUrl: `${base}/v3`,
    env: {
      OS_AUTH_URL: `${base}/v3`,
      OS_USERNAME: 'enforcer',
      OS_PASSWORD: 'standin-secret',
      OS_USER_DOMAIN_NAME: 'Default',
      OS_SYSTEM_SCOPE: 'all',
      OS_REGION_NAME: 'RegionOne',
      OS_INTERFACE: 'public',
    },
    serviceId: STANDIN_SERVICE_ID,
    calls: { tokens: 0, registeredLimits: 0, limits: 0, limitsOfOneProject: 0 },
    projectCalls: { listings: 0, byId: 0 },
    registered: init.registered ?? [],
    limits: init.limits ?? [],
    projects: init.projects ?? [],
    ...(init.listLimit !== undefined ? { listLimit: init.listLimit } : {}),
    down: false,
    resetCalls() {
      standIn.calls = { tokens: 0, registeredLimits: 0, limits: 0, limitsOfOneProject: 0 };
      standIn.projectCalls = { listings: 0, byId: 0 };
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };

  function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  }

  function collection(res: ServerResponse, url: URL, key: string, all: readonly Record<string, unknown>[]) {
    let items = all.filter((item) => FILTERS.every((f) => !url.searchParams.has(f) || item[f] === url.searchParams.get(f)));
    let truncated = false;
    if (standIn.listLimit !== undefined && items.length > standIn.listLimit) {
      items = items.slice(0, standIn.listLimit);
      truncated = true;
    }
    let next: string | null = null;
    if (standIn.pageSize !== undefined) {
      const offset = Number(url.searchParams.get('offset') ?? '0');
      if (offset + standIn.pageSize < items.length) {
        const nextUrl = new URL(url.pathname + url.search, standIn.nextBase ?? base);
        nextUrl.searchParams.set('offset', String(offset + standIn.pageSize));
        next = nextUrl.toString();
      }
      items = items.slice(offset, offset + standIn.pageSize);
    }
    send(res, 200, { [key]: items, links: { self: url.toString(), next, previous: null }, ...(truncated ? { truncated: true } : {}) });
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    for await (const _ of req); // drain the body
    const url = new URL(req.url ?? '/', base);
    if (standIn.down) return send(res, 503, { error: { code: 503, message: 'Service Unavailable' } });
    if (req.method === 'POST' && url.pathname === '/v3/auth/tokens') {
      standIn.calls.tokens++;
      const now = Date.now();
      return send(
        res,
        201,
        {
          token: {
            expires_at: new Date(now + 3_600_000).toISOString(),
            issued_at: new Date(now).toISOString(),
            user: { id: 'u-enforcer', name: 'enforcer' },
            system: { all: true },
            roles: [{ name: 'reader' }],
            catalog: [
              {
                id: STANDIN_SERVICE_ID,
                type: 'image',
                name: 'glance',
                endpoints: [
                  { id: 'e1', interface: 'public', region_id: 'RegionOne', url: 'http://glance-one:9292' },
                  { id: 'e2', interface: 'public', region_id: 'RegionTwo', url: 'http://glance-two:9292' },
                ],
              },
            ],
          },
        },
        { 'x-subject-token': token },
      );
    }
    if (req.headers['x-auth-token'] !== token) return send(res, 401, { error: { code: 401, message: 'The request you have made requires authentication.' } });
    if (req.method === 'GET' && url.pathname === '/v3/registered_limits') {
      standIn.calls.registeredLimits++;
      return collection(res, url, 'registered_limits', standIn.registered);
    }
    if (req.method === 'GET' && url.pathname === '/v3/limits') {
      if (url.searchParams.has('project_id')) standIn.calls.limitsOfOneProject++;
      else standIn.calls.limits++;
      return collection(res, url, 'limits', standIn.limits);
    }
    if (req.method === 'GET' && url.pathname === '/v3/projects') {
      standIn.projectCalls.listings++;
      return collection(res, url, 'projects', standIn.projects);
    }
    const one = /^\/v3\/projects\/([^/]+)$/.exec(url.pathname);
    if (req.method === 'GET' && one) {
      standIn.projectCalls.byId++;
      const project = standIn.projects.find((p) => p.id === decodeURIComponent(one[1]!));
      return project ? send(res, 200, { project }) : send(res, 404, { error: { code: 404, message: `Could not find project: ${one[1]}.` } });
    }
    send(res, 404, { error: { code: 404, message: `no ${req.method} ${url.pathname} in the stand-in` } });
  }

  return standIn;
}
