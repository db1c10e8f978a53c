import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';

/**
 * A made-up Glance v2 image API at cloud scale, for `bench:reconcile`: it holds no image. Image k
 * (0 <= k < N) is computed from k alone, so a cloud of 1M images costs this process nothing but
 * the page it is writing, and its memory never competes with the enforcer's.
 *
 * - Image k: a queued image of project floor(k / 5) (5 images a project), no data (size null),
 *   shared (Glance's default visibility since Rocky), not hidden, created k seconds before
 *   CLOUD_EPOCH, with the core fields in the order Glance 25's ResponseSerializer writes them.
 * - Ids are scattered as Glance's uuid4 ids and Keystone's uuid4 hex project ids are: the first 8
 *   hex digits of an image's id are k through a bijection of 32-bit numbers (`scatter`, a
 *   multiplication by an odd constant), and so are a project's. Consecutive images land far apart
 *   in any index by id, as a real cloud's do (ids that followed k would make every insert of a
 *   first pass an append, and hide what a real cloud's first pass costs the ledger).
 *   The id still gives k back (`gather`): a `marker` is found in O(1), as Glance finds it by id.
 * - Order: Glance's default sort (created_at desc, then id desc), which here is k ascending.
 * - Paging as Glance's: `limit` defaults to 25 (`limit_param_default`) and is capped at 1000
 *   (`api_limit_max`); a full page carries `next` (the query with `marker=<last id>`), so a cloud of
 *   a multiple of 1000 ends on an empty page; an unknown marker is a 400, as in Glance.
 * - Filters: `os_hidden=true` lists nothing (no image is hidden), `owner=` lists one project's five.
 *
 * One server serves clouds of every size: the size is in the path, so that GLANCE_URL
 * `http://127.0.0.1:PORT/clouds/100000` is a cloud of 100k images (the enforcer's client builds
 * `GLANCE_URL/v2/images`, and rebuilds each next page from its marker).
 *
 * Any non-empty X-Auth-Token is accepted: the token comes from a Keystone stand-in of its own.
 *
 * Run alone (`node --import tsx test/support/cloud-glance.ts`) it listens on 127.0.0.1 and prints
 * `{"port": N}` on its first line, for a bench to run it as a child process.
 */

export const IMAGES_PER_PROJECT = 5;
export const API_LIMIT_MAX = 1000;
const LIMIT_PARAM_DEFAULT = 25;
/** Image k was created k seconds before this. */
export const CLOUD_EPOCH = Date.parse('2026-11-01T00:00:00Z');

const hex = (n: number, digits: number) => n.toString(16).padStart(digits, '0');

/** Odd, so that multiplying by it modulo 2^32 is a bijection (Knuth's multiplicative hash: consecutive numbers land far apart). */
const SCATTER = 0x9e3779b1;
/** Its inverse modulo 2^32, by Newton's iteration (each step doubles the bits that are right). */
const GATHER = [1, 2, 3, 4, 5].reduce((x) => Math.imul(x, 2 - Math.imul(SCATTER, x)), SCATTER);
const scatter = (k: number) => Math.imul(k, SCATTER) >>> 0;
const gather = (s: number) => Math.imul(s, GATHER) >>> 0;

/** Keystone's shape: 32 hex digits, the project's number scattered first. */
export function cloudProjectId(p: number): string {
  return `${hex(scatter(p), 8)}c10dc10dc10dc10dc10dc10d`;
}

/** Uuid-shaped, k scattered first: consecutive images' ids sort far apart, as uuid4 ids do. */
export function cloudImageId(k: number): string {
  return `${hex(scatter(k), 8)}-c10d-4e00-8a00-${hex(Math.floor(k / IMAGES_PER_PROJECT), 12)}`;
}

/** The number behind an id's first 8 hex digits, or undefined (not a number this cloud scattered). */
function numberOf(id: string): number | undefined {
  return /^[0-9a-f]{8}/.test(id) ? gather(Number.parseInt(id.slice(0, 8), 16)) : undefined;
}

/** k of an id of this cloud, or undefined (not an id it ever gave). */
export function imageNumber(id: string, n: number): number | undefined {
  const k = numberOf(id);
  return k !== undefined && k < n && cloudImageId(k) === id ? k : undefined;
}

function projectNumber(id: string): number | undefined {
  const p = numberOf(id);
  return p !== undefined && cloudProjectId(p) === id ? p : undefined;
}

const isoSeconds = (ms: number) => `${new Date(ms).toISOString().slice(0, 19)}Z`;

/** Image k as Glance 25 shows a queued image made by `openstack image create --disk-format raw` (no extra properties). */
export function cloudImage(k: number): Record<string, unknown> {
  const id = cloudImageId(k);
  const created = isoSeconds(CLOUD_EPOCH - k * 1000);
  return {
    name: `cloud-image-${k}`,
    disk_format: 'raw',
    container_format: 'bare',
    visibility: 'shared',
    size: null,
    virtual_size: null,
    status: 'queued',
    checksum: null,
    protected: false,
    min_ram: 0,
    min_disk: 0,
    owner: cloudProjectId(Math.floor(k / IMAGES_PER_PROJECT)),
    os_hidden: false,
    os_hash_algo: null,
    os_hash_value: null,
    id,
    created_at: created,
    updated_at: created,
    tags: [],
    self: `/v2/images/${id}`,
    file: `/v2/images/${id}/file`,
    schema: '/v2/schemas/image',
  };
}

/** Glance's answer to `GET /v2/images?query` on a cloud of n images: status and JSON body. */
export function cloudListing(n: number, query: URLSearchParams): { status: number; body: string } {
  const bad = (message: string) => ({ status: 400, body: JSON.stringify({ message, code: '400 Bad Request' }) });
  const given = query.get('limit');
  const asked = given === null ? LIMIT_PARAM_DEFAULT : Number(given);
  if (!Number.isInteger(asked) || asked < 0) return bad('limit param must be positive');
  const limit = Math.min(asked, API_LIMIT_MAX);
  const hidden = query.get('os_hidden') ?? 'false';
  if (hidden !== 'true' && hidden !== 'false') return bad(`Invalid value for os_hidden: ${hidden}`);

  // The images the filters keep, as a range of k.
  let [from, to] = [0, hidden === 'true' ? 0 : n];
  const owner = query.get('owner');
  if (owner !== null) {
    const p = projectNumber(owner);
    [from, to] = p === undefined ? [0, 0] : [Math.max(from, p * IMAGES_PER_PROJECT), Math.min(to, (p + 1) * IMAGES_PER_PROJECT)];
  }
  const marker = query.get('marker');
  if (marker !== null) {
    const k = imageNumber(marker, n);
    if (k === undefined) return bad(`Marker ${marker} could not be found.`);
    from = Math.max(from, k + 1);
  }

  const images: string[] = [];
  for (let k = from; k < Math.min(to, from + limit); k++) images.push(JSON.stringify(cloudImage(k)));
  const first = new URLSearchParams(query);
  first.delete('marker');
  let body = `{"images": [${images.join(', ')}], "first": ${JSON.stringify(`/v2/images?${first.toString()}`)}, "schema": "/v2/schemas/images"`;
  if (images.length > 0 && images.length === limit) {
    const next = new URLSearchParams(query);
    next.set('marker', cloudImageId(from + limit - 1));
    body += `, "next": ${JSON.stringify(`/v2/images?${next.toString()}`)}`;
  }
  return { status: 200, body: `${body}}` };
}

interface Answer {
  status: number;
  body: string;
}

function answer(method: string | undefined, url: URL, token: string | undefined): Answer {
  const route = /^\/clouds\/(\d+)\/v2\/images(?:\/([^/]+))?$/.exec(url.pathname);
  if (!route) return { status: 404, body: JSON.stringify({ message: `no ${url.pathname} here: GLANCE_URL is http://HOST:PORT/clouds/<number of images>` }) };
  if (!token) return { status: 401, body: '{"message": "401 Unauthorized"}' };
  const n = Number(route[1]);
  if (route[2] === undefined) return method === 'GET' ? cloudListing(n, url.searchParams) : { status: 405, body: '{"message": "405 Method Not Allowed"}' };
  const k = imageNumber(decodeURIComponent(route[2]), n);
  if (k === undefined) return { status: 404, body: '{"message": "No image found"}' };
  // Nothing in this cloud is over its limit, so nothing should be deleted: say so loudly if it is.
  if (method !== 'GET') return { status: 501, body: JSON.stringify({ message: `the made-up cloud changes nothing: ${method} ${url.pathname}` }) };
  return { status: 200, body: JSON.stringify(cloudImage(k)) };
}

/** Serves clouds of every size on 127.0.0.1; `url(n)` is the GLANCE_URL of a cloud of n images. */
export async function cloudGlance(): Promise<{ url: (n: number) => string; close(): Promise<void> }> {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const { status, body } = answer(req.method, new URL(req.url ?? '/', 'http://cloud-glance'), req.headers['x-auth-token']?.toString());
      res.writeHead(status, { 'content-type': 'application/json' }).end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: (n) => `http://127.0.0.1:${port}/clouds/${n}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const glance = await cloudGlance();
  process.stdout.write(`${JSON.stringify({ port: Number(new URL(glance.url(0)).port) })}\n`);
}
