import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GlanceImage } from '../../src/ledger/glance-image.js';
import { createLogger } from '../../src/log.js';
import { loadCredentials } from '../../src/openstack/credentials.js';
import { GlanceClient } from '../../src/openstack/glance.js';
import { KeystoneClient } from '../../src/openstack/keystone.js';
import { cloudGlance, cloudImageId, cloudListing, cloudProjectId } from '../support/cloud-glance.js';
import { keystoneStandIn } from '../support/keystone-standin.js';

// bench:reconcile's made-up cloud is only worth its figures if it pages as Glance does.
describe('the made-up cloud of bench:reconcile', () => {
  const page = (n: number, query: Record<string, string>) => {
    const answer = cloudListing(n, new URLSearchParams(query));
    return { status: answer.status, ...(JSON.parse(answer.body) as { images: { id: string; owner: string }[]; next?: string; message?: string }) };
  };

  it('pages by marker, 1000 at most, with next on full pages only', () => {
    const first = page(2500, { limit: '5000', visibility: 'all' });
    expect(first.images).toHaveLength(1000);
    expect(first.next).toBe(`/v2/images?limit=5000&visibility=all&marker=${cloudImageId(999)}`);
    const last = page(2500, { limit: '1000', marker: cloudImageId(1999) });
    expect(last.images.map((i) => i.id)).toEqual(Array.from({ length: 500 }, (_, k) => cloudImageId(2000 + k)));
    expect(last.next).toBeUndefined();
    // A cloud of a multiple of the page size ends, as Glance's does, on an empty page.
    const exact = page(2000, { limit: '1000', marker: cloudImageId(999) });
    expect(exact.next).toBeDefined();
    expect(page(2000, { limit: '1000', marker: cloudImageId(1999) })).toMatchObject({ status: 200, images: [] });
    expect(page(2500, {}).images).toHaveLength(25);
  });

  it('filters on owner and os_hidden, and refuses a marker it never gave', () => {
    expect(page(100, { owner: cloudProjectId(3) }).images.map((i) => i.id)).toEqual([15, 16, 17, 18, 19].map(cloudImageId));
    expect(page(100, { owner: cloudProjectId(3), marker: cloudImageId(17) }).images).toHaveLength(2);
    expect(page(100, { owner: cloudProjectId(20) }).images).toEqual([]);
    expect(page(100, { os_hidden: 'true' }).images).toEqual([]);
    expect(page(100, { marker: cloudImageId(100) }).status).toBe(400);
    expect(page(100, { marker: 'not-an-id' }).status).toBe(400);
  });

  describe("through the enforcer's own Glance client", () => {
    let keystone: Awaited<ReturnType<typeof keystoneStandIn>>;
    let glance: Awaited<ReturnType<typeof cloudGlance>>;
    beforeAll(async () => {
      [keystone, glance] = await Promise.all([keystoneStandIn(), cloudGlance()]);
    });
    afterAll(async () => {
      await Promise.all([keystone.close(), glance.close()]);
    });
    const client = (n: number) => {
      const env = { ...keystone.env, OS_PROJECT_NAME: 'service', OS_PROJECT_DOMAIN_NAME: 'Default', GLANCE_URL: glance.url(n) };
      const log = createLogger('silent');
      return new GlanceClient(new KeystoneClient(loadCredentials(env, { searchDirs: [] }), { log }), { log });
    };

    it('lists every image once, queued and 5 a project, each one a valid GlanceImage', async () => {
      const listed = [];
      for await (const image of client(2003).listImages()) listed.push(image);
      expect(listed.map((i) => i.id)).toEqual(Array.from({ length: 2003 }, (_, k) => cloudImageId(k)));
      expect(listed.every((i, k) => GlanceImage.safeParse(i).success && i.status === 'queued' && i.owner === cloudProjectId(Math.floor(k / 5)))).toBe(true);
      expect(new Set(listed.map((i) => i.created_at)).size).toBe(2003);
    });

    it("lists one project's images on its own", async () => {
      const listed = [];
      for await (const image of client(2003).listImages({ owner: cloudProjectId(400) })) listed.push(image.id);
      expect(listed).toEqual([2000, 2001, 2002].map(cloudImageId));
    });
  });
});
