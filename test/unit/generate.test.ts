import { describe, expect, it } from 'vitest';
import { parseNotification } from '../../src/notification/parse.js';
import { osloTimestampMicros } from '../../src/notification/schema.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import { DOOR, captures, rawBody } from '../support/fixtures.js';
import { encodeBody, generateHistory, osloTimestamp, projectId, withDuplicates } from '../support/generate.js';
import { pipelineOf } from '../../src/composition-root.js';

/** The day these tests are judged at: after every captured and generated body. */
const NOW = Date.UTC(2026, 11, 1);

type Json = Record<string, unknown>;

function outer(body: string): Json {
  return JSON.parse(body) as Json;
}
function innerOf(body: string): Json {
  return JSON.parse(outer(body)['oslo.message'] as string) as Json;
}
function payloadOf(body: string): Json {
  return innerOf(body).payload as Json;
}

/** Key order at the three levels a consumer sees: envelope, oslo message, payload. */
function shape(body: string): { outer: string[]; inner: string[]; payload: string[] | string } {
  const p = innerOf(body).payload;
  return {
    outer: Object.keys(outer(body)),
    inner: Object.keys(innerOf(body)),
    payload: typeof p === 'object' && p !== null ? Object.keys(p) : typeof p,
  };
}

const MiB = 1024 * 1024;
const history = generateHistory({ seed: 7, projects: 40, messages: 20_000 });
const bodies = history.bodies;
/** Each body's inner message, decoded once for all the scenarios below. */
const messages = bodies.map(innerOf);

function firstBody(test: (m: Json) => boolean): string {
  const at = messages.findIndex(test);
  if (at < 0) throw new Error('the generated history has no such body');
  return bodies[at]!;
}

describe('a generated day of Glance notifications', () => {
  it('parses every body to an image event or a deliberate ignore, never to invalid', () => {
    const kinds: Record<string, number> = {};
    for (const body of withDuplicates(bodies, 0.02, 1)) {
      const out = parseNotification(body, NOW, DOOR);
      if (out.kind === 'invalid') throw new Error(`invalid: ${out.reason}\n${body}`);
      kinds[out.kind] = (kinds[out.kind] ?? 0) + 1;
    }
    expect(kinds.image).toBeGreaterThan(15_000);
    expect(kinds.ignored).toBeGreaterThan(500);
  });

  it('is the same stream for the same seed, and another for another seed', () => {
    const again = generateHistory({ seed: 7, projects: 40, messages: 20_000 });
    expect(again.bodies).toEqual(bodies);
    const other = generateHistory({ seed: 8, projects: 40, messages: 20_000 });
    expect(other.bodies[0]).not.toBe(bodies[0]);
    expect(withDuplicates(bodies, 0.05, 3)).toEqual(withDuplicates(bodies, 0.05, 3));
  });

  it('has exactly the messages asked for, with every kind of event Glance sends', () => {
    expect(bodies).toHaveLength(20_000);
    expect(Object.keys(history.eventCounts).sort()).toEqual([
      'image.activate',
      'image.create',
      'image.delete',
      'image.member.create',
      'image.member.delete',
      'image.member.update',
      'image.prepare',
      'image.send',
      'image.update',
      'image.upload',
      'image.upload.error',
      'task.create',
      'task.processing',
      'task.run',
      'task.success',
    ]);
  });
});

describe('the wire format is the captured one, byte for byte', () => {
  it('re-encodes all 36 captured bodies to the identical bytes', () => {
    for (const c of captures()) expect(encodeBody(c.decoded)).toBe(c.body);
  });

  it('writes every generated body exactly as the generic encoder (python json.dumps) would', () => {
    const differing = bodies.filter((body, i) => encodeBody(messages[i]!) !== body);
    expect(differing.slice(0, 1)).toEqual([]);
  });

  it('gives an image.create the key set and order of the capture, at every level', () => {
    const generated = firstBody((m) => m.event_type === 'image.create');
    expect(shape(generated)).toEqual(shape(rawBody('image.create')));
    expect(payloadOf(generated)).toMatchObject({ status: 'queued', checksum: null, size: null, virtual_size: null, deleted: false, deleted_at: null });
  });

  it("gives an upload's and an import's image.prepare the keys of their captures", () => {
    const upload = firstBody((m) => m.event_type === 'image.prepare' && (m.payload as Json).status === 'saving');
    const imported = firstBody((m) => m.event_type === 'image.prepare' && (m.payload as Json).status === 'importing');
    expect(shape(upload)).toEqual(shape(rawBody('image.prepare')));
    expect(shape(imported)).toEqual(shape(rawBody('image.prepare__2')));
    expect(payloadOf(upload)).toMatchObject({ os_glance_importing_to_stores: [], os_glance_failed_import: [], backend: 'file' });
    expect(payloadOf(imported)).toMatchObject({ os_glance_importing_to_stores: ['file'], backend: 'file' });
  });

  it('gives an image.delete the keys of the capture, with the tombstone set', () => {
    const generated = firstBody((m) => m.event_type === 'image.delete');
    expect(shape(generated)).toEqual(shape(rawBody('image.delete')));
    const p = payloadOf(generated);
    expect(p).toMatchObject({ status: 'deleted', deleted: true });
    expect(p.deleted_at).toBe(p.updated_at);
  });

  it('matches a capture of the same event type and priority for every generated body', () => {
    const reference = new Map<string, ReturnType<typeof shape>>();
    for (const c of captures()) {
      const key = `${c.eventType}/${c.priority}`;
      const s = shape(c.body);
      // image.upload and image.prepare each have one key list in all their captures.
      if (!reference.has(key)) reference.set(key, s);
      else expect(s).toEqual(reference.get(key));
    }
    const seen = new Set<string>();
    for (const body of bodies) {
      const m = innerOf(body);
      const key = `${m.event_type}/${m.priority}`;
      const expected = reference.get(key);
      expect(expected, `${key} has a capture`).toBeDefined();
      const s = shape(body);
      // Compare each distinct shape once: 20k deep-equals would only slow the run down.
      const sig = JSON.stringify([key, s]);
      if (!seen.has(sig)) {
        expect(s, key).toEqual(expected);
        seen.add(sig);
      }
    }
  });

  it('writes oslo timestamps as str(datetime): the fraction only when it is not zero', () => {
    const t = Date.UTC(2026, 10, 26, 20, 27, 41) * 1000;
    expect(osloTimestamp(t)).toBe('2026-11-26 20:27:41');
    expect(osloTimestamp(t + 984_542)).toBe('2026-11-26 20:27:41.984542');
    expect(osloTimestamp(t + 42)).toBe('2026-11-26 20:27:41.000042');
    expect(osloTimestampMicros(osloTimestamp(t + 7))).toBe(t + 7);
  });

  it('uses Keystone-shaped project ids that do not depend on the seed', () => {
    expect(projectId(0)).toMatch(/^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$/);
    expect(projectId(1)).not.toBe(projectId(0));
    const owners = new Set(bodies.map((b) => payloadOf(b)?.owner).filter((o) => typeof o === 'string'));
    for (const o of owners) expect(Array.from({ length: 40 }, (_, i) => projectId(i))).toContain(o);
  });
});

describe('lifecycles as the API produces them (lab NOTES, "Which API call emits what")', () => {
  it('never goes back in time on the wire, and puts same-second events of one image in oslo order', () => {
    let last = 0;
    let sameSecond = 0;
    const lastOf = new Map<string, { updated: number; ts: number }>();
    let backwards = 0;
    let outOfOrder = 0;
    for (const m of messages) {
      const ts = osloTimestampMicros(m.timestamp as string)!;
      if (ts < last) backwards++;
      last = ts;
      const p = m.payload;
      // Image payloads only: not the ERROR string, tasks, members or sends.
      if (typeof p !== 'object' || p === null || !('owner' in p) || !String(m.event_type).startsWith('image.')) continue;
      const id = (p as Json).id as string;
      const updated = Date.parse((p as Json).updated_at as string);
      const prev = lastOf.get(id);
      if (prev) {
        if (updated < prev.updated || ts <= prev.ts) outOfOrder++;
        if (updated === prev.updated) sameSecond++;
      }
      lastOf.set(id, { updated, ts });
    }
    expect({ backwards, outOfOrder }).toEqual({ backwards: 0, outOfOrder: 0 });
    // The ledger needs the oslo timestamp to order these: they must be common.
    expect(sameSecond).toBeGreaterThan(1000);
  });

  it("emits, per deleted image, one of the sequences Glance's API calls produce", () => {
    const tokens = new Map<string, string[]>();
    for (const m of messages) {
      const type = String(m.event_type).replace(/^image\./, '');
      const p = m.payload;
      let id: string;
      let token: string;
      if (typeof p === 'string') {
        id = /for image ([0-9a-f-]{36})/.exec(p)![1]!;
        token = `${type}:${m.priority}`;
      } else if (type.startsWith('task.')) {
        continue; // a task's payload does not name its image
      } else if ('image_id' in (p as Json)) {
        id = (p as Json).image_id as string;
        token = type;
      } else {
        id = (p as Json).id as string;
        token = `${type}:${(p as Json).status}`;
      }
      const list = tokens.get(id) ?? [];
      list.push(token);
      tokens.set(id, list);
    }
    const extras = '(?: send| member\\.create| member\\.update| member\\.delete| update:deactivated| update:active)*';
    const lifecycle = new RegExp(
      '^create:queued(?: update:queued)*' +
        '(?:' +
        ' update:saving prepare:saving upload:active activate:active update:active' +
        extras +
        '| update:uploading update:uploading update:importing prepare:importing upload:active activate:active update:active update:active' +
        extras +
        '| update:saving prepare:saving upload:ERROR update:queued' +
        ')? delete:deleted$',
    );
    let checked = 0;
    const unexpected: string[] = [];
    for (const list of tokens.values()) {
      if (!list.includes('delete:deleted')) continue; // still alive when the stream ends
      if (!lifecycle.test(list.join(' '))) unexpected.push(list.join(' '));
      checked++;
    }
    expect(unexpected.slice(0, 3)).toEqual([]);
    expect(checked).toBeGreaterThan(500);
  });

  it('gives a failed upload a plain-string payload on priority ERROR, as the capture', () => {
    const failed = firstBody((m) => m.priority === 'ERROR');
    expect(payloadOf(failed)).toMatch(
      /^Failed to upload image data for image [0-9a-f-]{36} due to internal error: The client disconnected while sending the body \(\d+ more bytes were expected\)$/,
    );
    expect(parseNotification(failed, NOW, DOOR).kind).toBe('ignored');
  });
});

describe("replaying the stream, redeliveries included, gives the generator's own usage", () => {
  it('re-inserts duplicates later in the stream and keeps the originals in order', () => {
    const original = bodies.slice(0, 5000);
    const stream = withDuplicates(original, 0.1, 9, 300);
    expect(stream.length - original.length).toBeGreaterThan(400);
    expect(stream.length - original.length).toBeLessThan(600);
    expect([...new Set(stream)]).toEqual(original);
    for (const b of new Set(stream)) {
      const first = stream.indexOf(b);
      const lastAt = stream.lastIndexOf(b);
      // At most 300 originals apart, plus the other copies that landed in between.
      if (first !== lastAt) expect(lastAt - first).toBeLessThanOrEqual(400);
    }
  });

  it('counts per project what the generator left alive', async () => {
    const pipeline = pipelineOf({ store: new MemoryStore(), limits: new StaticLimits({}), clock: () => NOW });
    const stream = withDuplicates(bodies, 0.03, 4);
    for (let i = 0; i < stream.length; i += 500) await pipeline.ingest(stream.slice(i, i + 500));
    for (let i = 0; i < 40; i++) {
      const project = projectId(i);
      const expected = history.live.get(project) ?? { count: 0, sizeBytes: 0 };
      const usage = await pipeline.ledger.usage(project);
      expect(usage.image_count_total, project).toBe(expected.count);
      expect(usage.image_size_total, project).toBe(Math.floor(expected.sizeBytes / MiB));
    }
  });
});
