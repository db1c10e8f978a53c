import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { GlanceImage } from '../../src/ledger/glance-image.js';
import { createLogger } from '../../src/log.js';
import { loadCredentials } from '../../src/openstack/credentials.js';
import { GlanceClient, type ListImagesOptions } from '../../src/openstack/glance.js';
import { ImagesBody, PAGE_TARGET_BYTES, WHOLE_READ_BYTES } from '../../src/openstack/images-body.js';
import { ERROR_BODY_KEPT_BYTES, ResponseBodyError, retryingTransport, type RetryPolicy } from '../../src/openstack/http.js';
import { KeystoneClient } from '../../src/openstack/keystone.js';
import { glanceStandIn, type GlanceStandIn, type StandInImage } from '../support/glance-standin.js';

/*
 * A tenant gives its images MBs of extra properties (Glance 25 accepts 3 MB) so that listing its
 * project costs the enforcer its memory, or its life (a body over 512 MiB cannot be one string).
 * Against a local Glance stand-in that streams such images.
 */

const quiet = createLogger('silent');
const fast: RetryPolicy = { attempts: 4, baseDelayMs: 1, maxDelayMs: 2, timeoutMs: 10_000 };
const MB = 1024 * 1024;

const standIns: GlanceStandIn[] = [];
const servers: http.Server[] = [];
afterEach(async () => {
  await Promise.all(standIns.splice(0).map((s) => s.close()));
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    s.close();
  }
});

async function glance(images: StandInImage[], options: { responseMaxBytes?: number } = {}) {
  const standIn = await glanceStandIn(images);
  standIns.push(standIn);
  const keystone = new KeystoneClient(loadCredentials(standIn.env, { searchDirs: [] }), { log: quiet, retry: fast, sleep: async () => {} });
  return { standIn, client: new GlanceClient(keystone, { log: quiet, ...options }) };
}

async function list(client: GlanceClient, options: ListImagesOptions = {}): Promise<string[]> {
  const ids: string[] = [];
  for await (const image of client.listImages({ owner: 'p-fat', ...options })) ids.push(image.id);
  return ids;
}

const fat = (id: string, fatBytes: number, extra: Partial<StandInImage> = {}): StandInImage => ({ id, owner: 'p-fat', fatBytes, ...extra });

describe('listing a project whose images carry MBs of properties', () => {
  it("reads each image's fields right, whatever its properties weigh", async () => {
    const { client } = await glance([fat('i-1', 1 * MB), fat('i-2', 2 * MB, { status: 'active' }), fat('i-3', 3 * MB, { os_hidden: true }), fat('i-4', 0)]);
    const images: unknown[] = [];
    const unreadable: string[] = [];
    for await (const image of client.listImages({ owner: 'p-fat', onUnreadable: (id) => unreadable.push(id) })) images.push(image);
    const fields = {
      name: expect.any(String),
      owner: 'p-fat',
      size: null,
      created_at: '2026-12-04T10:00:00Z',
      updated_at: '2026-12-04T10:00:00Z',
      protected: false,
      visibility: 'private',
    };
    expect(images).toEqual([
      { id: 'i-1', status: 'queued', os_hidden: false, ...fields },
      { id: 'i-2', status: 'active', os_hidden: false, ...fields },
      { id: 'i-4', status: 'queued', os_hidden: false, ...fields },
      { id: 'i-3', status: 'queued', os_hidden: true, ...fields },
    ]);
    expect(unreadable).toEqual([]);
    await expect(client.getImage('i-3')).resolves.toEqual({ id: 'i-3', status: 'queued', os_hidden: true, ...fields });
    // A patch's answer is the whole image too: read through, kept nowhere.
    await expect(client.unprotectImage('i-3')).resolves.toEqual({ result: 'unprotected' });
  });

  it('asks for smaller pages while pages are heavy, and for full ones again when they are light', async () => {
    const images = [
      ...Array.from({ length: 22 }, (_, n) => fat(`f-${String(n).padStart(2, '0')}`, 1.2 * MB)),
      ...Array.from({ length: 40 }, (_, n) => fat(`s-${String(n).padStart(2, '0')}`, 0)),
    ];
    const { client, standIn } = await glance(images);
    expect(await list(client, { limit: 10 })).toEqual(images.map((i) => i.id));
    const heavy = Math.floor(PAGE_TARGET_BYTES / (1.2 * MB));
    // 10 fat (12 MB) -> 3 a page (4 pages of fat, 1 of small) -> 10 again for the 37 small left; then the hidden pass.
    expect(standIn.limits).toEqual([10, heavy, heavy, heavy, heavy, heavy, 10, 10, 10, 10, 10]);
    expect(Math.max(...standIn.pageBytes.slice(1))).toBeLessThanOrEqual(PAGE_TARGET_BYTES);
  });

  it('asks a page over GLANCE_RESPONSE_MAX_BYTES again with fewer images, and lists them all', async () => {
    const images = Array.from({ length: 8 }, (_, n) => fat(`i-${n}`, 1.2 * MB));
    const { client, standIn } = await glance(images, { responseMaxBytes: 4 * MB });
    expect(await list(client)).toEqual(images.map((i) => i.id));
    // 1000 asked: cut off after 3 whole images -> 3 per page (3.6 MB), which fits.
    expect(standIn.limits.slice(0, 3)).toEqual([1000, 3, 3]);
  });

  it('lists a project with one image over the cap, alone on a page of its own: no image can stop a listing', async () => {
    const { client, standIn } = await glance(
      [fat('i-a', 1.2 * MB), fat('i-b', 1.2 * MB), fat('i-c', 3 * MB), fat('i-d', 0), { id: 'i-other', owner: 'p-other' }],
      { responseMaxBytes: 2 * MB },
    );
    expect(await list(client, { owner: 'p-fat' })).toEqual(['i-a', 'i-b', 'i-c', 'i-d']);
    // The page that reached i-c was cut at the cap and asked again, down to i-c alone.
    expect(standIn.limits).toContain(1);
    await expect(client.getImage('i-c')).resolves.toMatchObject({ id: 'i-c', owner: 'p-fat' });
  });

  it('starts a page afresh after a connection reset or a 503 half way, listing each image once', async () => {
    const images = Array.from({ length: 6 }, (_, n) => fat(`i-${n}`, 1.2 * MB));
    const { client, standIn } = await glance(images);
    standIn.faults.push('reset-mid-body', { status: 503 }, 'reset-mid-body');
    expect(await list(client)).toEqual(images.map((i) => i.id));
    expect(standIn.limits.slice(0, 4)).toEqual([1000, 1000, 1000, 1000]);
  });

  it('lists an image whose os_hidden flips between the two passes once', async () => {
    const images = [fat('i-a', 0), fat('i-b', 0), fat('i-c', 0)];
    const { client, standIn } = await glance(images);
    standIn.beforeListing = (query) => {
      if (query.get('os_hidden') === 'true') images[1]!.os_hidden = true;
    };
    expect(await list(client)).toEqual(['i-a', 'i-b', 'i-c']);
    expect(standIn.limits).toHaveLength(2);
  });

  it("keeps the memory of 100 images with 1.2 MB of properties each small (a child process's RSS)", async () => {
    const { standIn } = await glance(Array.from({ length: 100 }, (_, n) => fat(`i-${String(n).padStart(3, '0')}`, 1.2 * MB)));
    // Not spawnSync: the stand-in answers from this process's event loop.
    const child = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'test/support/list-images-child.ts'], {
      env: { ...process.env, ...standIn.env, LIST_OWNER: 'p-fat' },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(child.stderr).toBe('');
    const result = JSON.parse(child.stdout) as { listed: number; growthBytes: number };
    expect(result.listed).toBe(100);
    // The buffered client held the 120 MB body, its string and its parse: well over 300 MB.
    expect(result.growthBytes).toBeLessThan(150 * MB);
  });
});

describe('a listing read as a stream', () => {
  const kept = Object.keys(GlanceImage.shape);
  const text = fc.string({ unit: fc.constantFrom('\\', '"', 'a', 'é', '😀', '\n', '\u0001', '\ud800', ' ') });
  const value = fc.oneof(text, fc.jsonValue());
  const image = fc.dictionary(fc.oneof(fc.constantFrom(...kept, 'fat', 'tags', 'self'), text), value);
  const body = fc.record({ images: fc.array(image, { maxLength: 6 }), next: fc.option(text, { nil: undefined }), schema: fc.jsonValue() });

  // wholeBelow: read whole (JSON.parse), streamed from the first byte, or streamed from a point mid-body.
  const wholeBelow = fc.constantFrom(WHOLE_READ_BYTES, 0, 64);

  it('keeps what JSON.parse would, field for field, however the body is cut into chunks, read whole or streamed', () => {
    fc.assert(
      fc.property(body, fc.array(fc.nat(), { maxLength: 12 }), fc.constantFrom(undefined, 1, '\t'), wholeBelow, (page, cuts, indent, below) => {
        const bytes = Buffer.from(JSON.stringify(page, null, indent));
        const reader = new ImagesBody('listing', '', below);
        let at = 0;
        for (const cut of [...cuts.map((c) => c % (bytes.length + 1)).sort((a, b) => a - b), bytes.length]) {
          reader.write(bytes.subarray(at, Math.max(at, cut)));
          at = Math.max(at, cut);
        }
        reader.end();
        const parsed = JSON.parse(bytes.toString('utf8')) as { images: Record<string, unknown>[]; next?: unknown };
        const standIn = (v: unknown) => (Array.isArray(v) ? [] : typeof v === 'object' && v !== null ? {} : v);
        expect(reader.images).toEqual(
          parsed.images.map((i) =>
            Object.fromEntries(
              Object.entries(i)
                .filter(([k]) => kept.includes(k))
                .map(([k, v]) => [k, standIn(v)]),
            ),
          ),
        );
        expect(reader.next).toEqual(parsed.next);
        expect(reader.bytes).toBe(bytes.length);
      }),
      { numRuns: 500 },
    );
  });

  it.each([
    ['{"images": []} "x"', /the JSON body goes on after its value/],
    ['{"images": [1}', /closes a brace it did not open/],
    ['{"images": [], 7: 1}', /an object key that is not a string/],
    ['{"images": [{"id": "a"}]', /ended before its last value did/],
    ['{"images": [{"id": "a\\"}]}', /ends inside a string/],
    ['{"images": [{"id": tru}]}', /'tru' is not true, false or null/],
    ['{"images": [{"size": 1.}]}', /'1\.' is not a number/],
    ['{"images": [{"id": "\u0001"}]}', /control character/],
    ["{'images': []}", /unexpected "'" at byte 1/],
  ])('refuses %s, read whole or streamed, in the words of the tokenizer', (text, error) => {
    for (const below of [WHOLE_READ_BYTES, 0]) {
      const reader = new ImagesBody('listing', '', below);
      expect(() => {
        reader.write(Buffer.from(text));
        reader.end();
      }).toThrow(error);
    }
  });

  it('keeps what stands in an image or a body, read whole, as the tokenizer does', () => {
    for (const text of ['{"images": ["s", 3, null, [1], {"id": {"a": 1}, "tags": ["x"]}], "next": [2]}', '[1, 2]', '{"next": "n"}', '{"images": {}}']) {
      const [whole, streamed] = [WHOLE_READ_BYTES, 0].map((below) => {
        const reader = new ImagesBody('listing', '', below);
        reader.write(Buffer.from(text));
        reader.end();
        return { images: reader.images, next: reader.next, hasImages: reader.hasImages };
      });
      expect(whole).toEqual(streamed);
    }
    for (const text of ['"s"', '7', '[1]', '{"id": "a", "status": "queued", "fat": "x"}']) {
      const [whole, streamed] = [WHOLE_READ_BYTES, 0].map((below) => {
        const reader = new ImagesBody('image', '', below);
        reader.write(Buffer.from(text));
        reader.end();
        return reader.images;
      });
      expect(whole).toEqual(streamed);
    }
  });
});

describe('the body of a streamed call', () => {
  async function server(answer: (res: http.ServerResponse) => void): Promise<string> {
    const s = http.createServer((req, res) => req.resume().on('end', () => answer(res)));
    servers.push(s);
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  }
  const transport = retryingTransport({ service: 'glance', policy: fast, log: quiet, sleep: async () => {} });

  it('over its cap is refused at once, not asked again', async () => {
    let calls = 0;
    const url = await server((res) => {
      calls++;
      res.writeHead(200).end(Buffer.alloc(2 * MB, ' '));
    });
    const error = await transport({ method: 'GET', url, maxBodyBytes: MB, sink: () => new ImagesBody('listing') }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ResponseBodyError);
    expect(error).toMatchObject({ tooLarge: { limit: MB } });
    expect(calls).toBe(1);
  });

  it('that is not JSON fails with the URL, not asked again', async () => {
    let calls = 0;
    const url = await server((res) => {
      calls++;
      res.writeHead(200).end('{"images": [}');
    });
    await expect(transport({ method: 'GET', url, sink: () => new ImagesBody('listing', url) })).rejects.toThrow(
      /^glance: GET http:\/\/127\.0\.0\.1:\d+ answered a body the enforcer cannot read as JSON \(the JSON body closes a brace it did not open\)/,
    );
    expect(calls).toBe(1);
  });

  it('that ends before its JSON does fails', async () => {
    const url = await server((res) => res.writeHead(200).end('{"images": [{"id": "x"'));
    await expect(transport({ method: 'GET', url, sink: () => new ImagesBody('listing', url) })).rejects.toThrow(
      /the JSON body ended before its last value did/,
    );
  });

  it('of an error keeps its first 64 KiB only', async () => {
    const url = await server((res) => res.writeHead(404).end(`{"message": "${'n'.repeat(3 * MB)}"}`));
    const response = await transport({ method: 'GET', url, sink: () => new ImagesBody('listing') });
    expect(response.status).toBe(404);
    expect(response.text).toHaveLength(ERROR_BODY_KEPT_BYTES);
  });
});

describe("the whole cloud's listing, page by page (reconcile's pass)", () => {
  it('gives each page with where the listing goes on; from any of those positions, the rest and only the rest', async () => {
    const images = Array.from({ length: 7 }, (_, n) => fat(`i-${n}`, 0, { owner: `p-${n % 3}`, os_hidden: n % 3 === 2 }));
    const { client } = await glance(images);
    const pages: { ids: string[]; next: unknown }[] = [];
    for await (const page of client.listPages({ limit: 2 })) pages.push({ ids: page.images.map((i) => i.id), next: page.next });
    // Every image once, hidden ones in the second pass; the last page says there is no more.
    expect(pages.flatMap((p) => p.ids).sort()).toEqual(images.map((i) => i.id).sort());
    expect(pages.at(-1)!.next).toBeNull();
    expect(pages.slice(0, -1).every((p) => p.next !== null)).toBe(true);
    expect(pages.some((p) => (p.next as { hidden: boolean } | null)?.hidden === true)).toBe(true);
    // Resumed after each page, the listing yields exactly what followed that page.
    for (const [k, page] of pages.entries()) {
      if (page.next === null) continue;
      const rest: string[] = [];
      for await (const p of client.listPages({ limit: 2, from: page.next as { hidden: boolean; marker?: string } })) rest.push(...p.images.map((i) => i.id));
      expect(rest).toEqual(pages.slice(k + 1).flatMap((p) => p.ids));
    }
  });
});
