/**
 * The SQLite ledger's side of a streamed reconcile pass (issue 22) on a cloud of N images: what
 * one pass costs the store, apart from Glance.
 *
 *   node --import tsx bench/reconcile-store.ts                   # 1M images, 10% tombstones
 *   node --import tsx bench/reconcile-store.ts --images 200000 --order random
 *
 * It loads the ledger through `applyEvents` (10,000 projects), then measures `recordsOf` of 1000
 * ids, a whole `unmarkedLive` sweep with nothing marked (every live record returned), the mark of
 * 99% of the images 1000 at a time (`markListed`), the sweep of what that pass left unmarked, the
 * rate rule's window (`imagesCreatedSince`) and the walk of `projects` by page. `--order listing`
 * (the default) gives the ids newest first, as Glance lists them; `random` is the worst case for
 * the table's pages. The file is the bench's own, in the OS's temporary folder, removed at the end.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import type { ImageEvent } from '../src/notification/parse.js';
import { SqliteStore } from '../src/store/sqlite.js';

const { values: args } = parseArgs({
  options: {
    images: { type: 'string', default: '1000000' },
    order: { type: 'string', default: 'listing' },
  },
});
const N = Number(args.images);
const PROJECTS = 10_000;
const EPOCH = 1_700_000_000;
const ms = (since: bigint) => Number(process.hrtime.bigint() - since) / 1e6;
const perRow = (total: number, rows: number) => `${((total * 1000) / rows).toFixed(2)} µs/row`;

const dir = mkdtempSync(join(tmpdir(), 'gqe-reconcile-store-'));
try {
  const path = join(dir, 'ledger.db');
  const store = SqliteStore.open(path);
  let t = process.hrtime.bigint();
  for (let from = 0; from < N; from += 5000) {
    const batch: ImageEvent[] = [];
    for (let n = from; n < Math.min(N, from + 5000); n++) {
      const dead = n % 10 === 0;
      batch.push({
        messageId: randomUUID(),
        eventType: dead ? 'image.delete' : 'image.update',
        imageId: randomUUID(),
        projectId: `p-${n % PROJECTS}`,
        status: dead ? 'deleted' : n % 3 ? 'active' : 'queued',
        size: n % 3 ? 1024 : null,
        createdAt: EPOCH + n,
        updatedAt: EPOCH + n,
        timestamp: (EPOCH + n) * 1_000_000,
        importing: '',
        protected: false,
        deleted: dead,
      });
    }
    await store.applyEvents(batch, 1, { overwrite: true });
  }
  console.log(`${N} images (${N / 10} tombstones) loaded in ${(ms(t) / 1000).toFixed(1)} s; load average ${loadavg()[0]!.toFixed(1)}`);

  const reader = new Database(path, { readonly: true });
  const ids = reader
    .prepare<[], string>(`SELECT image_id FROM images ORDER BY ${args.order === 'random' ? 'random()' : 'created_at DESC'}`)
    .pluck()
    .all();
  reader.close();

  const sweep = async (pass: string) => {
    const since = process.hrtime.bigint();
    let cursor = '';
    let returned = 0;
    do {
      const page = await store.unmarkedLive(pass, cursor, 1000);
      returned += page.records.length;
      cursor = page.cursor;
    } while (cursor !== '');
    const took = ms(since);
    return `${returned} records in ${took.toFixed(0)} ms, ${perRow(took, N)} of the ledger`;
  };

  t = process.hrtime.bigint();
  let read = 0;
  for (let k = 0; k < 100; k++) read += (await store.recordsOf(ids.slice(k * 1000, (k + 1) * 1000))).length;
  console.log(`recordsOf, 1000 ids:              ${(ms(t) / 100).toFixed(2)} ms a call, ${perRow(ms(t), read)}`);
  console.log(`unmarkedLive, nothing marked:     ${await sweep('pass-0')}`);
  const listed = ids.filter((_, n) => n % 100 !== 50);
  const calls: number[] = [];
  t = process.hrtime.bigint();
  for (let n = 0; n < listed.length; n += 1000) {
    const call = process.hrtime.bigint();
    await store.markListed(listed.slice(n, n + 1000), 'pass-1');
    calls.push(ms(call));
  }
  const marking = ms(t);
  calls.sort((a, b) => a - b);
  console.log(
    `markListed, 1000 ids (${args.order}): median ${calls[calls.length >> 1]!.toFixed(2)} ms a call, p99 ${calls[Math.floor(calls.length * 0.99)]!.toFixed(2)} ms; the pass ${(marking / 1000).toFixed(1)} s, ${perRow(marking, listed.length)}`,
  );
  console.log(`unmarkedLive, 99% marked:         ${await sweep('pass-1')}`);
  t = process.hrtime.bigint();
  let recent = 0;
  for (let p = 0; p < 1000; p++) recent += (await store.imagesCreatedSince(`p-${p}`, EPOCH + N - 100_000)).length;
  console.log(`imagesCreatedSince, last 10%:     ${(ms(t) / 1000).toFixed(3)} ms a call, ${recent / 1000} records each`);
  t = process.hrtime.bigint();
  let pages = 0;
  for (let page = await store.projects({ after: '', limit: 500 }); page.length > 0; page = await store.projects({ after: page.at(-1)!, limit: 500 })) pages++;
  console.log(`projects by 500:                  ${pages} pages in ${ms(t).toFixed(1)} ms`);
  await store.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
