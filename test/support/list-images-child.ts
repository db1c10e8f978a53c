/**
 * Lists LIST_OWNER's images through GlanceClient (the OS_* and GLANCE_URL of the environment) in a
 * process of its own, and prints how far its RSS grew over the listing: sampled every 100 images (every page
 * the buffered way) and every 5 ms, against the RSS once the modules are loaded and a token is in hand.
 * For test/unit/glance-listing.test.ts and bench/listing.ts. With LIST_BUFFERED=1 it reads each page
 * the old way instead (the whole body as one string, then JSON.parse), for the bench's baseline.
 */
import { GlanceImage } from '../../src/ledger/glance-image.js';
import { createLogger } from '../../src/log.js';
import { loadCredentials } from '../../src/openstack/credentials.js';
import { GlanceClient } from '../../src/openstack/glance.js';
import { KeystoneClient } from '../../src/openstack/keystone.js';

const log = createLogger('silent');
const keystone = new KeystoneClient(loadCredentials(process.env, { searchDirs: [] }), { log });
const owner = process.env.LIST_OWNER!;
await keystone.token('project');
const baseRss = process.memoryUsage().rss;
let peakRss = baseRss;
const sample = () => {
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
};
const timer = setInterval(sample, 5);
const started = performance.now();
let listed = 0;
if (process.env.LIST_BUFFERED === '1') {
  listed = await listBuffered();
} else {
  for await (const _ of new GlanceClient(keystone, { log }).listImages({ owner })) {
    // memoryUsage() costs about 20 us: at every 100th image, as the buffered way samples at every page.
    if (++listed % 100 === 0) sample();
  }
}
const ms = performance.now() - started;
clearInterval(timer);
sample();
process.stdout.write(JSON.stringify({ listed, ms, baseRss, peakRss, growthBytes: peakRss - baseRss }));

/** The client before streaming: each page a whole string, JSON.parse'd, each image through GlanceImage, 1000 a page. */
async function listBuffered(): Promise<number> {
  const token = (await keystone.token('project')).value;
  const base = process.env.GLANCE_URL!;
  let count = 0;
  for (const hidden of ['false', 'true']) {
    let marker = '';
    for (;;) {
      const params = new URLSearchParams({ owner, visibility: 'all', os_hidden: hidden, limit: '1000', ...(marker ? { marker } : {}) });
      const response = await fetch(`${base}/v2/images?${params.toString()}`, { headers: { accept: 'application/json', 'x-auth-token': token } });
      const page = JSON.parse(await response.text()) as { images: unknown[]; next?: string };
      for (const image of page.images) if (GlanceImage.safeParse(image).success) count++;
      sample();
      const next = page.next ? new URLSearchParams(page.next.split('?')[1] ?? '').get('marker') : null;
      if (!next) break;
      marker = next;
    }
  }
  return count;
}
