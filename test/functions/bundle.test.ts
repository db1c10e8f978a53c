import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildFunctions, type FUNCTION_NAMES, type BuiltFunction } from '../../scripts/build-functions.js';
import type { Pipeline } from '../../src/pipeline/index.js';
import { replayFile, type ReplaySummary } from '../../src/doors/replay.js';
import { MemoryStore } from '../../src/store/memory.js';
import { quotaTestBodies } from '../support/fixtures.js';
import { compareLedgers } from '../support/ledger-oracle.js';
import { ATTACKER, ATTACKER_LIMITED, MemoryGlance, chunks, freshLedgerPerTest, realBodies, rmqEvent, scheduledEvent, sqsEvent } from './support.js';
import { pipelineOf } from '../../src/composition-root.js';

/*
 * The function bundles themselves (what serverless.yml packages, scripts/build-functions.ts),
 * not the sources: each handler imported by Node from its bundle, its own config, pipeline and
 * store adapter (bundled ioredis / pg) over a real shared ledger, with only Keystone and Glance
 * played in memory. The same results as `replay` over the same real bodies.
 */

const dir = mkdtempSync(join(tmpdir(), 'gqe-bundle-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Handler = (event: unknown, context?: { awsRequestId?: string }) => Promise<any>;
type Entry = {
  handler: Handler;
  handlerOver: (env: NodeJS.ProcessEnv, options: { openstack: { glance: unknown; limits: unknown }; metrics?: (line: string) => void }) => Handler;
};

// Built under a `node_modules` directory, which the test runner leaves to Node's own import
// (it transforms only the project's files): the bundle runs as Lambda's runtime would run it.
const quiet = () => {};
const nativeImport = (url: string) => import(/* @vite-ignore */ url) as Promise<Entry>;

let built: BuiltFunction[];
const entries: Partial<Record<(typeof FUNCTION_NAMES)[number], Entry>> = {};
beforeAll(async () => {
  built = await buildFunctions(join(dir, 'node_modules', 'lambda'));
  for (const b of built) entries[b.name] = await nativeImport(pathToFileURL(join(b.dir, 'index.mjs')).href);
}, 120_000);

async function replayOf(bodies: readonly string[]): Promise<{ oracle: Pipeline; summary: ReplaySummary }> {
  const file = join(dir, `replay-${Math.random().toString(36).slice(2)}.jsonl`);
  writeFileSync(file, bodies.join('\n') + '\n');
  const oracle = pipelineOf({ store: new MemoryStore(), limits: ATTACKER_LIMITED });
  return { oracle, summary: await replayFile(oracle, file) };
}

describe('the bundles, as built', () => {
  it('load no store driver, no AWS SDK and no SQLite at import: those are chunks read on demand', () => {
    for (const b of built) {
      const loaded = Object.keys(b.loadedAtImport);
      expect(
        loaded.filter((i) => /node_modules\/(ioredis|pg|@aws-sdk|@smithy|better-sqlite3)\//.test(i)),
        b.name,
      ).toEqual([]);
      expect(loaded.some((i) => i.endsWith('src/pipeline/index.ts'))).toBe(true);
      // Both drivers are in the bundle, for whichever STORE_URL names; SQLite is in none.
      expect(b.inputs.some((i) => i.includes('node_modules/ioredis/')) && b.inputs.some((i) => i.includes('node_modules/pg/'))).toBe(true);
      expect(b.inputs.filter((i) => /better-sqlite3|src\/store\/sqlite\.ts/.test(i))).toEqual([]);
      // zod by namespace (scripts/build-functions.ts): what is used of it, not all 450 KB.
      const zod = Object.entries(b.loadedAtImport)
        .filter(([i]) => i.includes('node_modules/zod/'))
        .reduce((n, [, bytes]) => n + bytes, 0);
      expect(zod).toBeLessThan(200_000);
    }
  });
});

describe.each(['redis', 'postgres'] as const)('the bundled handlers over a %s ledger', (kind) => {
  const shared = freshLedgerPerTest(kind);

  const env = (more: Record<string, string> = {}) => ({ ...shared.ledger.env, LOG_LEVEL: 'silent', ...more });

  it('amazonmq: batches of the real bodies give the same ledger and the same would-deletes as replay', async () => {
    const bodies = realBodies();
    const { oracle, summary } = await replayOf(bodies);
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const handler = entries.amazonmq!.handlerOver(env({ ENFORCEMENT_MODE: 'dry-run' }), { openstack: { glance, limits: ATTACKER_LIMITED }, metrics: quiet });
    let applied = 0;
    for (const batch of chunks(bodies, 10)) applied += (await handler(rmqEvent(batch), { awsRequestId: 'req-1' })).messages.applied;
    expect(applied).toBe(summary.messages.applied);
    expect(await compareLedgers(pipelineOf({ store: shared.store, limits: ATTACKER_LIMITED }), oracle)).toMatchObject({ differences: [], projects: 1 });
    const toDelete = summary.projects.find((p) => p.projectId === ATTACKER)!.toDelete;
    const actions = await shared.store.actions({ projectId: ATTACKER });
    expect(actions.map((a) => [a.action, a.imageId]).sort()).toEqual(toDelete.map((id) => ['would-delete', id]).sort());
    expect(glance.deleted).toEqual([]);
  });

  it('sqs in enforce mode deletes exactly what replay says, and reports only the poison (no dead-letter queue URL)', async () => {
    const { summary } = await replayOf(realBodies());
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const emf: Record<string, unknown>[] = [];
    const handler = entries.sqs!.handlerOver(env({ LOG_LEVEL: 'info' }), {
      openstack: { glance, limits: ATTACKER_LIMITED },
      metrics: (line) => emf.push(JSON.parse(line)),
    });
    const { event, records } = sqsEvent([...realBodies(), 'this is not JSON {']);
    // The bundle's logger writes to this process's stderr: its lines, read on the way.
    const logged: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string | Uint8Array) => logged.push(String(chunk)) > 0) as typeof process.stderr.write;
    let reply: Awaited<ReturnType<Handler>>;
    try {
      reply = await handler(event, { awsRequestId: 'bundle-req-1' });
    } finally {
      process.stderr.write = write;
    }
    const lines = logged
      .join('')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l));
    // Every line, the cold start's and the pipeline's deletions included, carries the request id.
    expect(lines.map((l) => l.msg)).toEqual(expect.arrayContaining(['function instance ready', 'SQS batch done']));
    expect(lines.filter((l) => l.imageId !== undefined).length).toBeGreaterThanOrEqual(2);
    expect(lines.filter((l) => l.requestId !== 'bundle-req-1')).toEqual([]);
    expect(reply.batchItemFailures).toEqual([{ itemIdentifier: records.at(-1)!.messageId }]);
    expect(glance.deleted.sort()).toEqual([...summary.projects.find((p) => p.projectId === ATTACKER)!.toDelete].sort());
    expect(await shared.store.usage(ATTACKER)).toMatchObject({ image_count_total: 1 });
    // The bundle's metrics, in CloudWatch's embedded metric format.
    expect(emf.filter((d) => d.action === 'deleted')).toEqual([expect.objectContaining({ function: 'sqs', Actions: 2, _aws: expect.anything() })]);
  });

  it("reconcile: Glance's listing into the ledger, then decide and act", async () => {
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const handler = entries.reconcile!.handlerOver(env({ ENFORCEMENT_MODE: 'dry-run' }), { openstack: { glance, limits: ATTACKER_LIMITED }, metrics: quiet });
    const summary = await handler(scheduledEvent);
    expect(summary).toMatchObject({ complete: true, phase: 'done' });
    expect(await shared.store.usage(ATTACKER)).toMatchObject({ image_count_total: 3 });
    expect((await shared.store.actions({ projectId: ATTACKER })).map((a) => a.action)).toEqual(['would-delete', 'would-delete']);
  });
});
