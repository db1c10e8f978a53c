import { describe, expect, it } from 'vitest';
import { parseBySchemas, parseNotification, parseWellFormed, type ParseOutcome } from '../../src/notification/parse.js';
import { checkImagePayload, checkOsloMessage, isoSeconds, osloTimestampMicros } from '../../src/notification/schema.js';
import { DOOR, captures } from '../support/fixtures.js';
import { Rng, generateHistory, withDuplicates } from '../support/generate.js';
import { z } from 'zod';
import { guardOf } from '../../src/notification/guard.js';

/** The day these tests are judged at: after every captured and generated body. */
const NOW = Date.UTC(2026, 11, 1);

/**
 * parseNotification decides well-formed bodies with plain guards and leaves the rest to the zod
 * schemas (src/notification/schema.ts says why). These scenarios hold it to the schemas alone,
 * outcome for outcome and reason text for reason text, on a generated day of traffic and on a
 * battery of broken bodies; and they hold the guards to being exact: a body they turn down is
 * one the schemas reject too, never a valid one sent the slow way.
 */

/** Bodies are edited freely, wrong types and all. */
type Json = any;

const history = generateHistory({ seed: 5, projects: 50, messages: 20_000 });
const stream = withDuplicates(history.bodies, 0.01, 6);

function innerOf(body: string): Json {
  return JSON.parse(JSON.parse(body)['oslo.message'] as string);
}

/** One inner message per shape on the wire: event type, priority and payload keys. */
const bases: Json[] = (() => {
  const byShape = new Map<string, Json>();
  for (const body of [...captures().map((c) => c.body), ...history.bodies]) {
    const m = innerOf(body);
    const p = m.payload;
    const key = `${m.event_type} ${m.priority} ${p !== null && typeof p === 'object' ? Object.keys(p).join() : typeof p}`;
    if (!byShape.has(key)) byShape.set(key, m);
  }
  return [...byShape.values()];
})();

// ---------------------------------------------------------------------------------------------
// The battery

const WRONG: Json[] = [null, 0, -1, 1.5, true, false, '', 'x', [], ['a'], {}, { a: 1 }];
const OSLO_TIMES = [
  '2026-11-26 20:27:41',
  '2026-11-26 20:27:41.984542',
  '2026-11-26 20:27:41.5',
  '2026-11-26 20:27:41.000001',
  '2026-02-30 10:00:00',
  '2026-02-29 10:00:00',
  '2024-02-29 10:00:00',
  '2026-11-26T20:27:41Z',
  '2026-11-26 20:27:41Z',
  '2026-11-26 20:27:41+00:00',
  '2026-11-26 20:27:41.',
  '2026-11-26 20:27:41.1234567',
  '2026-11-26 20:27:41.12a',
  '2026-11-26 20:27:41,5',
  '2026-11-26 24:00:00',
  '2026-11-26 23:59:60',
  '2026-11-26 23:60:00',
  '2026-13-01 00:00:00',
  '2026-00-10 00:00:00',
  '2026-11-00 00:00:00',
  ' 2026-11-26 20:27:41',
  '2026-11-26 20:27:41\n',
  '2026-11-26  20:27:41',
  '２０２６-11-26 20:27:41',
  '2026-11-26 20:27:41.١',
  '0099-01-01 00:00:00',
  '0000-01-01 00:00:00',
  '9999-12-31 23:59:59.999999',
  '2026-11-26',
  '',
  '2026-11-26 20:27:4',
  '20261126 202741',
  // The door: oslo's year 0050 is not 1950, minute 60 is not the next hour, the future is not believed.
  '0050-01-01 00:00:00',
  '2026-11-26 10:60:00',
  '2099-01-01 00:00:00',
  '2026-12-01 00:05:00',
  '2026-12-01 00:05:01',
];
const ISO_TIMES = [
  '2026-11-26T20:27:41Z',
  '2026-02-30T10:00:00Z',
  '2026-11-26 20:27:41',
  '2026-11-26T20:27:41',
  '2026-11-26T20:27:41+01:00',
  '2026-11-26T20:27:41+00:00',
  '2026-11-26T20:27:41-0000',
  '2026-11-26T20:27:41+0000',
  '2026-11-26T20:27:41.123Z',
  '2026-11-26T20:27:41.123456789Z',
  '2026-11-26T25:00:00Z',
  '2026-11-26T20:27:41z',
  'yesterday',
  '',
  '2026-11-26',
  '1969-12-31T23:59:59Z',
  '0000-01-01T00:00:00Z',
  '2026-11-26T20:27:41.Z',
  '0050-06-15T12:00:00Z',
  '2026-11-26T10:60:00Z',
  '2099-01-01T00:00:00Z',
  '2026-12-01T00:05:00Z',
  '2026-12-01T00:05:01Z',
];
const PRIORITIES = ['INFO', 'info', 'Info', 'WARN', 'warn', 'ERROR', 'DEBUG', '', 'ınfo', 'CRITICAL', 'SAMPLE', ' INFO'];
const EVENT_TYPES = [
  'image.create',
  'image.update',
  'image.prepare',
  'image.upload',
  'image.activate',
  'image.delete',
  'image.send',
  'task.run',
  'IMAGE.CREATE',
  'image.member.create',
  '',
];
/** Raw JSON put in place of a value: numbers JSON.stringify cannot write (-0, 1e400 = Infinity) and keys it would not. */
const RAW_SIZES = ['-0', '1e3', '1.0', '9007199254740991', '9007199254740992', '1e400', '-1e-400', '0.5e1', '-1', '3', '1125899906842624', '1125899906842625'];
/** What the door admits of ids, owners, statuses and message ids: bounded, printable, as Glance and Keystone make them. */
const IDS = [
  '94c33273-4702-45ad-a25b-17a3ac735dee',
  '94C33273-4702-45AD-A25B-17A3AC735DEE',
  '94c33273470245ada25b17a3ac735dee',
  '94c33273-4702-45ad-a25b-17a3ac735de\u0000',
  '94c33273-4702-45ad-a25b-17a3ac735dee ',
  'g4c33273-4702-45ad-a25b-17a3ac735dee',
  'image-1',
];
const OWNERS = [
  '615696c542784834ac46630e5a22dbe3',
  'a',
  'A_b-9',
  'a'.repeat(64),
  'a'.repeat(65),
  'demo project',
  'demo\u001b[31m',
  'ab\ud800',
  'ab\ud83d\ude00',
  'x\u0000',
];
const STATUSES = ['queued', 'pending_delete', 'Queued', 'queued\u0000', 'q'.repeat(33), 'q'.repeat(32)];
const MESSAGE_IDS = ['5a7e6b1e-7b7c-4c8e-9b1a-0d2c3e4f5a6b', 'x'.repeat(255), 'x'.repeat(256), 'has space', 'nul\u0000', 'é'];
const STORES = ['file', 'a,b', 'x'.repeat(1024), 'x'.repeat(1025), 'file\u0000', 'file\ud800', '\u{1F600}'];
const RAW_PROPERTIES = [
  '{"__proto__": {"os_glance_importing_to_stores": "evil"}}',
  '{"__proto__": null}',
  '{"constructor": "x", "os_glance_importing_to_stores": "a"}',
  '[]',
  '[["os_glance_importing_to_stores", "a"]]',
];
const MESSAGE_KEYS = ['message_id', 'publisher_id', 'event_type', 'priority', 'payload', 'timestamp'];
const PAYLOAD_KEYS = [
  'id',
  'owner',
  'status',
  'size',
  'created_at',
  'updated_at',
  'deleted_at',
  'deleted',
  'protected',
  'properties',
  'os_glance_importing_to_stores',
  'tags',
  'visibility',
  'name',
];
const RAW = '\u0000raw\u0000';

interface Edit {
  name: string;
  apply: (m: Json) => void;
  /** JSON text that replaces the RAW placeholder once the message is serialised. */
  raw?: string;
}

function at(path: string[], change: (parent: Json, key: string) => void): (m: Json) => void {
  return (m) => {
    let o = m;
    for (const k of path.slice(0, -1)) o = o !== null && typeof o === 'object' ? o[k] : undefined;
    if (o !== null && typeof o === 'object') change(o, path[path.length - 1]!);
  };
}
const set = (path: string[], value: Json) => at(path, (o, k) => (o[k] = structuredClone(value)));
const drop = (path: string[]) => at(path, (o, k) => delete o[k]);

const EDITS: Edit[] = [
  ...MESSAGE_KEYS.flatMap((k) => [{ name: `no ${k}`, apply: drop([k]) }, ...WRONG.map((w) => ({ name: `${k} = ${JSON.stringify(w)}`, apply: set([k], w) }))]),
  ...PAYLOAD_KEYS.flatMap((k) => [
    { name: `no payload.${k}`, apply: drop(['payload', k]) },
    ...WRONG.map((w) => ({ name: `payload.${k} = ${JSON.stringify(w)}`, apply: set(['payload', k], w) })),
  ]),
  ...OSLO_TIMES.map((t) => ({ name: `timestamp ${JSON.stringify(t)}`, apply: set(['timestamp'], t) })),
  ...ISO_TIMES.flatMap((t) => [
    { name: `created_at ${JSON.stringify(t)}`, apply: set(['payload', 'created_at'], t) },
    { name: `updated_at ${JSON.stringify(t)}`, apply: set(['payload', 'updated_at'], t) },
  ]),
  ...IDS.map((v) => ({ name: `id ${JSON.stringify(v)}`, apply: set(['payload', 'id'], v) })),
  ...OWNERS.map((v) => ({ name: `owner ${JSON.stringify(v)}`, apply: set(['payload', 'owner'], v) })),
  ...STATUSES.map((v) => ({ name: `status ${JSON.stringify(v)}`, apply: set(['payload', 'status'], v) })),
  ...MESSAGE_IDS.flatMap((v) => [
    { name: `message_id ${JSON.stringify(v)}`, apply: set(['message_id'], v) },
    { name: `event_type ${JSON.stringify(v)}`, apply: set(['event_type'], v) },
  ]),
  ...STORES.flatMap((v) => [
    { name: `stored importing ${JSON.stringify(v)}`, apply: set(['payload', 'properties'], { os_glance_importing_to_stores: v }) },
    { name: `top-level importing ${JSON.stringify(v)}`, apply: set(['payload', 'os_glance_importing_to_stores'], [v, v]) },
  ]),
  ...ISO_TIMES.map((t) => ({ name: `deleted_at ${JSON.stringify(t)}`, apply: set(['payload', 'deleted_at'], t) })),
  ...PRIORITIES.map((p) => ({ name: `priority ${JSON.stringify(p)}`, apply: set(['priority'], p) })),
  ...EVENT_TYPES.map((e) => ({ name: `event_type ${JSON.stringify(e)}`, apply: set(['event_type'], e) })),
  ...RAW_SIZES.map((raw) => ({ name: `size ${raw}`, apply: set(['payload', 'size'], RAW), raw })),
  ...RAW_PROPERTIES.map((raw) => ({ name: `properties ${raw}`, apply: set(['payload', 'properties'], RAW), raw })),
  ...[
    {},
    { os_glance_importing_to_stores: 'a,b' },
    { os_glance_importing_to_stores: 5 },
    { os_glance_importing_to_stores: '' },
    { os_glance_importing_to_stores: ['x'] },
  ].map((v) => ({ name: `properties ${JSON.stringify(v)}`, apply: set(['payload', 'properties'], v) })),
  ...[['a', 'b'], ['a', 1], [], 'x', '', null, [null], [['a']]].map((v) => ({
    name: `top-level os_glance_importing_to_stores ${JSON.stringify(v)}`,
    apply: set(['payload', 'os_glance_importing_to_stores'], v),
  })),
  ...[true, false, 'true', 1, null].flatMap((v) => [
    { name: `deleted ${JSON.stringify(v)}`, apply: set(['payload', 'deleted'], v) },
    { name: `protected ${JSON.stringify(v)}`, apply: set(['payload', 'protected'], v) },
  ]),
  { name: 'a null owner', apply: set(['payload', 'owner'], null) },
  { name: 'a string payload (a failed upload)', apply: set(['payload'], 'Image upload failed: disk full') },
  { name: 'an array payload', apply: set(['payload'], [{ id: 'x' }]) },
  {
    name: 'unknown keys everywhere',
    apply: (m) => {
      m.extra = 1;
      if (m.payload !== null && typeof m.payload === 'object') m.payload.extra = { y: [1] };
    },
  },
];

function wrap(m: Json, raw?: string): string {
  let inner = JSON.stringify(m);
  if (raw !== undefined) inner = inner.replace(JSON.stringify(RAW), raw);
  return JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': inner });
}

/** The same message in broken or unusual envelopes, and unwrapped. */
function envelopes(m: Json): string[] {
  const inner = JSON.stringify(m);
  const wrapped = (message: unknown, extra: object = {}) => JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': message, ...extra });
  return [
    inner,
    ` \n${inner}\n`,
    `\ufeff${inner}`,
    JSON.stringify(inner),
    JSON.stringify({ 'oslo.message': inner }),
    JSON.stringify({ 'oslo.version': 2, 'oslo.message': inner }),
    JSON.stringify({ 'oslo.version': null, 'oslo.message': inner }),
    wrapped(m),
    wrapped(null),
    wrapped(5),
    wrapped('{'),
    wrapped(''),
    wrapped('[]'),
    wrapped('"x"'),
    wrapped('null'),
    wrapped('42'),
    wrapped(wrapped(inner)),
    wrapped(inner, { 'x-extra': true }),
    wrapped(inner).slice(0, -1),
    JSON.stringify([JSON.parse(wrapped(inner))]),
  ];
}

const LOOSE = ['null', '[]', '"str"', '42', 'true', 'garbage', '', '{}', '{"oslo.message": 5}', '{"__proto__": {"oslo.message": "{}"}}', '\u0000'];

/** Every edit on every base, every envelope of every base, then `mixed` random combinations of up to three edits. */
function poisonBodies(mixed: number, seed: number): string[] {
  const out = [...LOOSE];
  for (const base of bases) {
    for (const e of EDITS) {
      const m = structuredClone(base);
      e.apply(m);
      out.push(wrap(m, e.raw));
    }
    out.push(...envelopes(base));
  }
  const rng = new Rng(seed);
  for (let i = 0; i < mixed; i++) {
    const m = structuredClone(rng.pick(bases));
    let raw: string | undefined;
    for (let k = rng.between(1, 3); k > 0; k--) {
      const e = rng.pick(EDITS);
      if (e.raw !== undefined && raw !== undefined) continue;
      raw ??= e.raw;
      e.apply(m);
    }
    out.push(rng.chance(0.2) ? rng.pick(envelopes(m)) : wrap(m, raw));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/** Bodies whose outcome differs between parseNotification and the schemas alone, described. */
function mismatches(bodies: readonly (string | Buffer)[]): string[] {
  const out: string[] = [];
  for (const body of bodies) {
    const fast: ParseOutcome = parseNotification(body, NOW, DOOR);
    const reference = parseBySchemas(body, NOW, DOOR);
    // JSON text: the same values, the same reason bytes, the same key order.
    if (JSON.stringify(fast) !== JSON.stringify(reference)) {
      out.push(`${String(body)}\n  fast:    ${JSON.stringify(fast)}\n  schemas: ${JSON.stringify(reference)}`);
    }
  }
  return out;
}

/** Bodies that the guards send to the schemas although the schemas accept them. */
function validButTurnedDown(bodies: readonly string[]): string[] {
  return bodies.filter((b) => parseWellFormed(b, NOW, DOOR) === undefined && parseBySchemas(b, NOW, DOOR).kind !== 'invalid');
}

describe('the fast parse equals the schemas', () => {
  it('on a generated day of Glance traffic, redeliveries included, and settles every body without zod', () => {
    expect(mismatches(stream).slice(0, 5)).toEqual([]);
    expect(stream.filter((b) => parseWellFormed(b, NOW, DOOR) === undefined)).toEqual([]);
    const kinds = new Set(stream.map((b) => parseNotification(b, NOW, DOOR).kind));
    expect([...kinds].sort()).toEqual(['ignored', 'image']);
  });

  it('on every body Glance 25.1 really sent', () => {
    const bodies = captures().map((c) => c.body);
    expect(mismatches(bodies)).toEqual([]);
    expect(validButTurnedDown(bodies)).toEqual([]);
  });

  const poison = poisonBodies(5_000, 11);

  it('on a battery of broken bodies, reason text included', () => {
    const kinds: Record<string, number> = {};
    for (const b of poison) kinds[parseBySchemas(b, NOW, DOOR).kind] = (kinds[parseBySchemas(b, NOW, DOOR).kind] ?? 0) + 1;
    // The battery reaches all three outcomes, mostly rejections.
    expect(kinds.invalid).toBeGreaterThan(4_000);
    expect(kinds.ignored).toBeGreaterThan(500);
    expect(kinds.image).toBeGreaterThan(500);
    expect(mismatches(poison).slice(0, 5)).toEqual([]);
  });

  it('turns down only what the schemas reject: a valid body never takes the slow way', () => {
    expect(validButTurnedDown(poison).slice(0, 5)).toEqual([]);
  });

  it('rejects a body over MAX_MESSAGE_BYTES the same way on both paths, as text or as bytes', () => {
    const limits = { maxMessageBytes: 1000, clockSkewSeconds: 300 };
    const sample = [...poison.slice(0, 500), ...stream.slice(0, 500)];
    let over = 0;
    for (const b of sample) {
      for (const body of [b, Buffer.from(b)]) {
        const fast = parseNotification(body, NOW, limits);
        expect(JSON.stringify(fast)).toBe(JSON.stringify(parseBySchemas(body, NOW, limits)));
        if (Buffer.byteLength(b) > 1000) {
          over++;
          expect(fast).toMatchObject({ kind: 'invalid', reason: expect.stringMatching(/MAX_MESSAGE_BYTES \(1000\)/) });
        }
      }
    }
    expect(over).toBeGreaterThan(100);
  });

  it('gives the same outcome for a body as bytes as for the same body as text', () => {
    const sample = [...poison.slice(0, 300), ...stream.slice(0, 300)];
    expect(mismatches(sample.map((b) => Buffer.from(b)))).toEqual([]);
    for (const b of sample) expect(parseNotification(Buffer.from(b), NOW, DOOR)).toEqual(parseNotification(b, NOW, DOOR));
  });

  it('does not depend on what came before: the remembered second and times never leak into another body', () => {
    const rng = new Rng(12);
    const mixed = Array.from({ length: 6_000 }, () => (rng.chance(0.5) ? rng.pick(poison) : rng.pick(stream)));
    expect(mismatches(mixed).slice(0, 5)).toEqual([]);
  });
});

describe('each timestamp is read once, to the value of the reference functions', () => {
  const message = innerOf(stream[0]!);

  it.each(OSLO_TIMES)('oslo timestamp %j', (timestamp) => {
    // Twice, and after a neighbour of the same second, so the remembered second is used.
    for (const before of ['2026-11-26 20:27:41.1', timestamp, '1999-01-01 00:00:00']) {
      checkOsloMessage({ ...message, timestamp: before });
      expect(checkOsloMessage({ ...message, timestamp })?.timestampMicros).toBe(osloTimestampMicros(timestamp));
    }
  });

  it.each(ISO_TIMES)('payload time %j', (time) => {
    for (const before of ['2026-11-26T20:27:41Z', time, 'x']) {
      checkImagePayload({ ...message.payload, created_at: before, updated_at: before });
      const checked = checkImagePayload({ ...message.payload, created_at: time, updated_at: time });
      expect(checked?.createdAt).toBe(isoSeconds(time));
      expect(checked?.updatedAt).toBe(isoSeconds(time));
    }
  });
});

describe('calendar times are read by arithmetic, exactly as a Date counts them', () => {
  /** The reference: a Date set field by field, and undefined for whatever it rolls over. */
  function byDate(y: number, mo: number, d: number, h: number, mi: number, s: number): number | undefined {
    if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59) return undefined;
    const date = new Date(0);
    date.setUTCFullYear(y, mo - 1, d);
    if (date.getUTCDate() !== d || date.getUTCMonth() !== mo - 1) return undefined;
    date.setUTCHours(h, mi, s, 0);
    return date.getTime();
  }
  const pad = (v: number, w: number) => String(v).padStart(w, '0');

  it('on every year 0-9999, every month 0-13 and day 0-32 (leap days, century years, year 50)', () => {
    let mismatches = 0;
    for (let y = 0; y <= 9999; y++) {
      for (let mo = 0; mo <= 13; mo++) {
        for (let d = 0; d <= 32; d++) {
          const want = byDate(y, mo, d, 23, 59, 59);
          const date = `${pad(y, 4)}-${pad(mo, 2)}-${pad(d, 2)}`;
          if (isoSeconds(`${date}T23:59:59Z`) !== (want === undefined ? undefined : want / 1000)) mismatches++;
          if (osloTimestampMicros(`${date} 23:59:59.000001`) !== (want === undefined ? undefined : want * 1000 + 1)) mismatches++;
        }
      }
    }
    expect(mismatches).toBe(0);
  });

  it('on random times, out-of-range hours, minutes and seconds included', () => {
    const rng = new Rng(17);
    for (let i = 0; i < 20_000; i++) {
      const [y, mo, d, h, mi, s] = [rng.between(0, 9999), rng.between(1, 12), rng.between(1, 31), rng.between(0, 24), rng.between(0, 60), rng.between(0, 60)];
      const want = byDate(y, mo, d, h, mi, s);
      expect(isoSeconds(`${pad(y, 4)}-${pad(mo, 2)}-${pad(d, 2)}T${pad(h, 2)}:${pad(mi, 2)}:${pad(s, 2)}Z`)).toBe(want === undefined ? undefined : want / 1000);
    }
  });
});

describe("Glance's own form (20 characters, Z) is read digit by digit", () => {
  it('as the pattern reads the same time with +00:00, whatever character stands anywhere in it', () => {
    const base = '2024-02-29T23:59:59Z';
    // ASCII digits and every separator, and look-alikes: Arabic-Indic and full-width digits, a NUL.
    const stand = ['0', '1', '9', '-', ':', 'T', 't', 'Z', ' ', '/', '.', 'a', '\u0660', '\uff11', '\u0000'];
    let compared = 0;
    for (let at = 0; at < 19; at++) {
      for (const c of stand) {
        const value = `${base.slice(0, at)}${c}${base.slice(at + 1)}`;
        // The same time through the pattern: a zone of +00:00 is not the fast path's form.
        expect(isoSeconds(value), value).toBe(isoSeconds(`${value.slice(0, 19)}+00:00`));
        compared++;
      }
    }
    expect(compared).toBe(19 * stand.length);
    expect(isoSeconds(base)).toBe(Date.UTC(2024, 1, 29, 23, 59, 59) / 1000);
    expect(isoSeconds('2024-02-29T23:59:59z')).toBeUndefined();
  });
});

describe('a guard is derived from its schema, never guessed', () => {
  it("follows a change to the schema: a new bound or pattern is the guard's at once", () => {
    const size = guardOf(z.object({ size: z.number().int().nonnegative().max(10).nullable().optional() }));
    expect([{}, { size: null }, { size: 0 }, { size: 10 }].map(size)).toEqual([true, true, true, true]);
    expect([{ size: 11 }, { size: -1 }, { size: 1.5 }, { size: '1' }, [], null].map(size)).toEqual([false, false, false, false, false, false]);
    const labels = guardOf(z.record(z.string(), z.string()));
    expect([{}, { a: 'x' }, { a: 'x', b: 1 }, ['x']].map(labels)).toEqual([true, true, false, false]);
    const refined = guardOf(
      z
        .string()
        .regex(/^a/)
        .refine((v) => v.length < 3),
    );
    expect(['ab', 'abc', 'ba', 5].map(refined)).toEqual([true, false, false, false]);
  });

  it('refuses, when it is made, a construct it has no guard for, naming where it is', () => {
    expect(() => guardOf(z.object({ tags: z.set(z.string()) }))).toThrow(/schema\.tags: no guard for z\.set\(\)/);
    expect(() => guardOf(z.object({ name: z.string().min(1) }))).toThrow(/schema\.name: no guard for the check min_length/);
  });
});
