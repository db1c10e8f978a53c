import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import type { IngestResult } from '../../src/pipeline/index.js';
import { handleRabbitMqEvent } from '../../src/doors/lambda/amazonmq.js';
import { handleSqsEvent } from '../../src/doors/lambda/sqs.js';
import { usageOf } from '../../src/ledger/usage.js';
import { MAX_IMAGE_SIZE } from '../../src/notification/schema.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { KeptPoison, MemoryGlance, chunks, rmqEvent, servicesOver, sqsEvent } from '../functions/support.js';
import { envelope, inner, rawBody } from '../support/fixtures.js';
import { freshLedger, requireServices, type LedgerKind, type TestLedger } from '../support/services.js';
import { pipelineOf } from '../../src/composition-root.js';

/*
 * Hostile bodies at the door of every store and of both function handlers: what an attacker with
 * publish rights on Glance's exchange can send (the findings of issue 10, and random bodies),
 * mixed with valid creates. Whatever comes, nothing throws, nothing stalls, every valid message is
 * counted exactly once, every hostile one is invalid with its reason, and the totals each store
 * keeps equal a rescan of its records.
 */

/** A small MAX_MESSAGE_BYTES keeps thousands of oversized bodies cheap; the rule is the same. */
const ENV = { MAX_MESSAGE_BYTES: String(64 * 1024), CLOCK_SKEW_SECONDS: '300' };
const config = loadConfig(ENV);
const MiB = 1024 * 1024;
const TEMPLATE = inner(rawBody('image.create'));
const PROJECTS = ['615696c542784834ac46630e5a22dbe3', '81566b2f2198430fbd7aa2d6c0954a76', 'aaaabbbbccccdddd0000111122223333', 'ldap_project-7'];

const hex = (n: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${n}}$`));
const uuid = fc.tuple(hex(8), hex(4), hex(4), hex(4), hex(12)).map((p) => p.join('-'));

interface Valid {
  body: string;
  project: string;
  size: number;
}

/** A valid image.create: a new image of one of the projects, dated in the past. */
const valid: fc.Arbitrary<Valid> = fc
  .record({
    id: uuid,
    messageId: uuid,
    project: fc.constantFrom(...PROJECTS),
    size: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 2 ** 40 })),
    ageS: fc.integer({ min: 400, max: 10 * 365 * 86_400 }),
  })
  .map(({ id, messageId, project, size, ageS }) => {
    const at = new Date(Date.now() - ageS * 1000).toISOString();
    const iso = at.replace(/\.\d+Z$/, 'Z');
    const body = envelope({
      ...TEMPLATE,
      message_id: messageId,
      timestamp: at.replace('T', ' ').replace('Z', ''),
      payload: { ...TEMPLATE.payload, id, owner: project, size, status: 'active', created_at: iso, updated_at: iso },
    });
    return { body, project, size };
  });

/** Seconds ahead of the wall clock: at least 900, past the 300 s allowance however long the run takes (the boundary is tested with a fixed clock in test/unit/notification.test.ts). */
const future = (seconds: number) => new Date(Date.now() + seconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
const controlOrSurrogate = fc.constantFrom('\u0000', '\u001b[31m', '\n', '\u007f', '\ud800', '\udc00');

/** One field of a real create set to a value the door must refuse. */
const mutated: fc.Arbitrary<string> = fc
  .oneof(
    fc.record({
      path: fc.constant('payload.id'),
      value: fc.oneof(
        fc.string({ maxLength: 40 }).filter((s) => !/^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$/.test(s)),
        uuid.chain((u) => controlOrSurrogate.map((c) => u.slice(0, 35) + c)),
        fc.constant('x'.repeat(5000)),
      ),
    }),
    fc.record({
      path: fc.constant('payload.owner'),
      value: fc.oneof(
        fc.constant(''),
        fc.constant('a'.repeat(65)),
        fc.string({ minLength: 1, maxLength: 10 }).chain((s) => controlOrSurrogate.map((c) => s + c)),
        fc.constant('demo project'),
      ),
    }),
    fc.record({
      path: fc.constant('payload.size'),
      value: fc.oneof(
        fc.integer({ max: -1 }),
        fc.double({ noInteger: true, noNaN: true }).filter(Number.isFinite),
        fc.integer({ min: MAX_IMAGE_SIZE + 1, max: Number.MAX_SAFE_INTEGER }),
        fc.constant('1024'),
      ),
    }),
    fc.record({ path: fc.constant('payload.status'), value: fc.oneof(fc.constant('queued\u0000'), fc.constant('q'.repeat(33)), fc.constant('QUEUED')) }),
    fc.record({
      path: fc.constant('payload.created_at'),
      value: fc.oneof(fc.constant('2026-02-30T10:00:00Z'), fc.constant('2026-11-26T10:60:00Z'), fc.integer({ min: 900, max: 80 * 365 * 86_400 }).map(future)),
    }),
    fc.record({
      path: fc.constant('payload.updated_at'),
      value: fc.oneof(fc.constant('2099-01-01T00:00:00Z'), fc.integer({ min: 900, max: 86_400 }).map(future)),
    }),
    fc.record({ path: fc.constant('payload.deleted_at'), value: fc.oneof(fc.constant('2099-01-01T00:00:00Z'), fc.constant('never')) }),
    fc.record({
      path: fc.constant('timestamp'),
      value: fc.oneof(fc.constant('2026-02-30 10:00:00'), fc.constant('2099-01-01 00:00:00'), fc.constant('2026-11-26 20:27:41+00:00')),
    }),
    fc.record({
      path: fc.constant('message_id'),
      value: fc.oneof(fc.constant(''), fc.constant('m'.repeat(20_000)), fc.constant('has space'), controlOrSurrogate),
    }),
    fc.record({
      path: fc.constant('payload.properties'),
      value: fc.oneof(
        fc.constant({ os_glance_importing_to_stores: 'x'.repeat(2000) }),
        controlOrSurrogate.map((c) => ({ os_glance_importing_to_stores: `file${c}` })),
      ),
    }),
  )
  .chain(({ path, value }) =>
    fc.tuple(uuid, uuid).map(([id, messageId]) => {
      const m = structuredClone({ ...TEMPLATE, message_id: messageId, payload: { ...TEMPLATE.payload, id, owner: PROJECTS[0] } });
      const keys = path.split('.');
      let o: Record<string, unknown> = m;
      for (const k of keys.slice(0, -1)) o = o[k] as Record<string, unknown>;
      o[keys[keys.length - 1]!] = value;
      return envelope(m);
    }),
  );

/** Anything at all, an oversized body, deep nesting, or a real create with one field made hostile. */
const hostile: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: mutated },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 200 }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v) ?? 'null') },
  {
    weight: 1,
    arbitrary: fc.integer({ min: 66_000, max: 100_000 }).map((k) => envelope({ ...TEMPLATE, payload: { ...TEMPLATE.payload, name: 'n'.repeat(k) } })),
  },
  { weight: 1, arbitrary: fc.integer({ min: 1_000, max: 10_000 }).map((d) => '['.repeat(d) + ']'.repeat(d)) },
);

interface Stream {
  bodies: string[];
  kinds: ('valid' | 'hostile')[];
  valid: Valid[];
}

/** Hostile and valid bodies shuffled together, deterministically. */
function stream(seed: number, hostileCount: number, validCount: number): Stream {
  const h = fc.sample(hostile, { seed, numRuns: hostileCount });
  const v = fc.sample(valid, { seed: seed + 1, numRuns: validCount });
  const order = fc.sample(fc.shuffledSubarray([...Array(hostileCount + validCount).keys()], { minLength: hostileCount + validCount }), {
    seed: seed + 2,
    numRuns: 1,
  })[0]!;
  const bodies: string[] = [];
  const kinds: Stream['kinds'] = [];
  for (const i of order) {
    bodies.push(i < hostileCount ? h[i]! : v[i - hostileCount]!.body);
    kinds.push(i < hostileCount ? 'hostile' : 'valid');
  }
  return { bodies, kinds, valid: v };
}

/** What the valid creates add up to, per project. */
function expectedUsage(s: Stream): Map<string, { count: number; bytes: number }> {
  const out = new Map<string, { count: number; bytes: number }>();
  for (const v of s.valid) {
    const t = out.get(v.project) ?? { count: 0, bytes: 0 };
    out.set(v.project, { count: t.count + 1, bytes: t.bytes + v.size });
  }
  return out;
}

/** Resolves with `promise`, or fails the test: a door that stalls is a finding. */
async function noStall<T>(promise: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} stalled for ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, stalled]);
  } finally {
    clearTimeout(timer);
  }
}

function checkOutcomes(s: Stream, results: { result: string; reason?: string }[]): void {
  expect(results).toHaveLength(s.bodies.length);
  const wrong: string[] = [];
  results.forEach((o, i) => {
    if (s.kinds[i] === 'valid' && o.result !== 'applied') wrong.push(`valid body ${i} was ${o.result}: ${o.reason}`);
    if (s.kinds[i] === 'hostile') {
      if (o.result !== 'invalid') wrong.push(`hostile body ${i} was ${o.result}: ${s.bodies[i]!.length > 2000 ? s.bodies[i]!.slice(0, 300) : s.bodies[i]}`);
      else if (!o.reason || Buffer.byteLength(o.reason) > 1024) wrong.push(`hostile body ${i}: reason missing or over 1 KiB (${o.reason?.length})`);
    }
  });
  expect(wrong.slice(0, 5)).toEqual([]);
}

/** Every project's kept totals equal a rescan of its records, and the valid creates' sum. */
async function checkTotals(store: LedgerStore, s: Stream): Promise<void> {
  const expected = expectedUsage(s);
  expect((await store.projects()).sort()).toEqual([...expected.keys()].sort());
  for (const [project, t] of expected) {
    const usage = await store.usage(project);
    expect(usage, project).toEqual(usageOf(await store.images(project)));
    expect(usage.image_count_total, project).toBe(t.count);
    expect(usage.image_size_total, project).toBe(Math.floor(t.bytes / MiB));
  }
}

async function throughPipeline(store: LedgerStore, s: Stream, batch: number): Promise<void> {
  const pipeline = pipelineOf({ store, limits: new StaticLimits({}), door: config.door });
  const outcomes: IngestResult['outcomes'] = [];
  for (const part of chunks(s.bodies, batch)) outcomes.push(...(await noStall(pipeline.ingest(part), 'ingest')).outcomes);
  checkOutcomes(s, outcomes);
  await checkTotals(store, s);
  // Redelivered, the whole stream changes nothing: valid ones are duplicates, hostile ones invalid again.
  const again = await noStall(pipeline.ingest(s.bodies), 'ingest of the redelivery');
  again.outcomes.forEach((o, i) => {
    expect(o.result).toBe(s.kinds[i] === 'valid' ? 'duplicate' : 'invalid');
  });
  await checkTotals(store, s);
}

describe('hostile bodies at the door', () => {
  it('the memory store, as a property over many small streams (fast-check shrinks a failure)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 1_000_000 }), async (seed) => {
        const s = stream(seed, 40, 20);
        await throughPipeline(new MemoryStore(), s, 16);
      }),
      { numRuns: 40, seed: 10 },
    );
  }, 60_000);

  describe.each(['sqlite', 'postgres', 'redis'] as LedgerKind[])('the %s store', (kind) => {
    let ledger: TestLedger;
    beforeAll(async () => {
      if (kind !== 'sqlite') await requireServices(kind);
      ledger = await freshLedger(kind);
    });
    afterAll(async () => ledger?.cleanUp());

    it('counts 400 valid creates exactly among 1,000 hostile bodies, in batches of 64', async () => {
      const store = await ledger.open();
      try {
        await throughPipeline(store, stream(kind.length * 7, 1_000, 400), 64);
      } finally {
        await store.close();
      }
    }, 60_000);
  });

  describe('the function handlers', () => {
    it('sqs: dead-letters every hostile record with its reason, reports none, counts every valid one', async () => {
      const s = stream(31, 1_000, 300);
      const store = new MemoryStore();
      const poison = new KeptPoison();
      const services = servicesOver({ store, glance: new MemoryGlance(), limits: new StaticLimits({}), poison, env: ENV });
      let applied = 0;
      for (const part of chunks(s.bodies, 10)) {
        const reply = await noStall(handleSqsEvent(services, sqsEvent(part).event), 'sqs handler');
        expect(reply.batchItemFailures).toEqual([]);
        applied += reply.messages.applied;
      }
      expect(applied).toBe(300);
      expect(poison.sent).toHaveLength(1_000);
      expect(poison.sent.every((p) => p.reason.length > 0 && Buffer.byteLength(p.reason) <= 1024)).toBe(true);
      await checkTotals(store, s);
    }, 60_000);

    it('amazonmq: sets every hostile message aside and goes on, counts every valid one', async () => {
      const s = stream(32, 1_000, 300);
      const store = new MemoryStore();
      const services = servicesOver({ store, glance: new MemoryGlance(), limits: new StaticLimits({}), env: ENV });
      const counts = { applied: 0, invalid: 0 };
      for (const part of chunks(s.bodies, 50)) {
        const summary = await noStall(handleRabbitMqEvent(services, rmqEvent(part)), 'amazonmq handler');
        counts.applied += summary.messages.applied;
        counts.invalid += summary.messages.invalid;
      }
      expect(counts).toEqual({ applied: 300, invalid: 1_000 });
      await checkTotals(store, s);
    }, 60_000);
  });
});
