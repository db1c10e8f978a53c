import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A Keystone token endpoint and a Glance v2 image API on 127.0.0.1, for the listing tests and
 * `bench:listing`: images whose extra properties weigh MBs are streamed from one shared buffer
 * (the stand-in itself stays small), in Glance 25's order (extra properties first, then the core
 * fields: glance/api/v2/images.py ResponseSerializer), with its paging (`limit` capped at
 * api_limit_max 1000, `next` with the last id as marker, `os_hidden` filtered on every pass).
 */
export interface StandInImage {
  id: string;
  owner: string;
  status?: string;
  os_hidden?: boolean;
  /** Bytes of an extra property `fat` (before the core fields, as Glance puts it). */
  fatBytes?: number;
}

/** What to do instead of answering the next listing request normally. */
export type ListingFault = { status: number } | 'reset-mid-body';

export interface GlanceStandIn {
  /** The environment of an enforcer with a project-scoped admin identity on it (GLANCE_URL set). */
  env: NodeJS.ProcessEnv;
  images: StandInImage[];
  /** The `limit` of every listing request, in order. */
  limits: number[];
  /** The bytes of every listing body sent whole. */
  pageBytes: number[];
  faults: ListingFault[];
  /** Called before each listing request is answered (to change `images` between passes). */
  beforeListing?: (query: URLSearchParams) => void;
  close(): Promise<void>;
}

const API_LIMIT_MAX = 1000;
const TOKEN = 'standin-glance-token';
const FAT = Buffer.alloc(4 * 1024 * 1024, 'x');

function core(image: StandInImage): Record<string, unknown> {
  return {
    name: `image ${image.id}`,
    disk_format: 'raw',
    container_format: 'bare',
    visibility: 'private',
    size: null,
    virtual_size: null,
    status: image.status ?? 'queued',
    checksum: null,
    protected: false,
    min_ram: 0,
    min_disk: 0,
    owner: image.owner,
    os_hidden: image.os_hidden ?? false,
    os_hash_algo: null,
    os_hash_value: null,
    id: image.id,
    created_at: '2026-12-04T10:00:00Z',
    updated_at: '2026-12-04T10:00:00Z',
    tags: ['standin', 'a "quoted" tag'],
    self: `/v2/images/${image.id}`,
    file: `/v2/images/${image.id}/file`,
    schema: '/v2/schemas/image',
  };
}

/** The image's JSON in pieces: a fat property (a slice of FAT, no copy) and the rest. */
function pieces(image: StandInImage): Buffer[] {
  const rest = Buffer.from(JSON.stringify(core(image)).slice(1));
  if (!image.fatBytes) return [Buffer.from('{'), rest];
  return [Buffer.from('{"fat": "'), FAT.subarray(0, image.fatBytes), Buffer.from('", '), rest];
}

export async function glanceStandIn(images: StandInImage[] = []): Promise<GlanceStandIn> {
  const server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const standIn: GlanceStandIn = {
    env: {
      OS_AUTH_URL: `${base}/v3`,
      OS_USERNAME: 'enforcer',
      OS_PASSWORD: 'standin-secret',
      OS_USER_DOMAIN_NAME: 'Default',
      OS_PROJECT_NAME: 'service',
      OS_PROJECT_DOMAIN_NAME: 'Default',
      GLANCE_URL: base,
    },
    images,
    limits: [],
    pageBytes: [],
    faults: [],
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };

  async function write(res: ServerResponse, chunk: Buffer): Promise<void> {
    if (!res.write(chunk)) await once(res, 'drain');
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    for await (const _ of req); // drain the body
    const url = new URL(req.url ?? '/', base);
    if (req.method === 'POST' && url.pathname === '/v3/auth/tokens') {
      const now = Date.now();
      res.writeHead(201, { 'content-type': 'application/json', 'x-subject-token': TOKEN });
      res.end(
        JSON.stringify({
          token: {
            expires_at: new Date(now + 3_600_000).toISOString(),
            issued_at: new Date(now).toISOString(),
            user: { id: 'u-enforcer', name: 'enforcer' },
            project: { id: 'p-service', name: 'service' },
            roles: [{ name: 'admin' }],
            catalog: [],
          },
        }),
      );
      return;
    }
    if (req.headers['x-auth-token'] !== TOKEN) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"message": "401 Unauthorized"}');
      return;
    }
    const one = /^\/v2\/images\/([^/]+)$/.exec(url.pathname);
    if (one) {
      const image = standIn.images.find((i) => i.id === decodeURIComponent(one[1]!));
      if (!image) {
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"message": "No image found"}');
        return;
      }
      // GET, or PATCH (Glance answers a patch with the whole image).
      res.writeHead(200, { 'content-type': 'application/json' });
      for (const piece of pieces(image)) await write(res, piece);
      res.end();
      return;
    }
    if (url.pathname !== '/v2/images') {
      res.writeHead(404).end();
      return;
    }
    const limit = Math.min(API_LIMIT_MAX, Number(url.searchParams.get('limit') ?? API_LIMIT_MAX));
    standIn.limits.push(limit);
    standIn.beforeListing?.(url.searchParams);
    const fault = standIn.faults.shift();
    if (fault && fault !== 'reset-mid-body') {
      res.writeHead(fault.status, { 'content-type': 'application/json' }).end(`{"message": "standin fault ${fault.status}"}`);
      return;
    }
    const hidden = url.searchParams.get('os_hidden') === 'true';
    const owner = url.searchParams.get('owner');
    const matching = standIn.images.filter((i) => Boolean(i.os_hidden) === hidden && (!owner || i.owner === owner));
    const marker = url.searchParams.get('marker');
    const start = marker ? matching.findIndex((i) => i.id === marker) + 1 : 0;
    const page = matching.slice(start, start + limit);
    res.writeHead(200, { 'content-type': 'application/json' });
    let bytes = 0;
    const send = async (chunk: Buffer) => {
      bytes += chunk.length;
      await write(res, chunk);
    };
    await send(Buffer.from('{"images": ['));
    for (const [n, image] of page.entries()) {
      if (fault === 'reset-mid-body' && n === Math.floor(page.length / 2)) {
        res.destroy();
        return;
      }
      if (n > 0) await send(Buffer.from(', '));
      for (const piece of pieces(image)) await send(piece);
    }
    const query = new URLSearchParams(url.searchParams);
    query.set('marker', page.at(-1)?.id ?? '');
    await send(
      Buffer.from(
        `], "first": "/v2/images", "schema": "/v2/schemas/images"${page.length === limit ? `, "next": ${JSON.stringify(`/v2/images?${query.toString()}`)}` : ''}}`,
      ),
    );
    standIn.pageBytes.push(bytes);
    res.end();
  }

  return standIn;
}
