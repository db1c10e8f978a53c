import { describe, expect, it } from 'vitest';
import { LEDGER_EVENTS, parseNotification } from '../../src/notification/parse.js';
import { isoSeconds, osloTimestampMicros } from '../../src/notification/schema.js';
import { DOOR, captures, envelope, inner, rawBody } from '../support/fixtures.js';

/** The day these tests are judged at: after every captured and generated body. */
const NOW = Date.UTC(2026, 11, 1);

describe('parsing the notifications Glance 25.1 really sent', () => {
  const all = captures();

  it('has the 36 captured bodies of the lab run', () => {
    expect(all).toHaveLength(36);
  });

  for (const c of all) {
    it(`${c.file}: ${c.eventType} at ${c.priority}`, () => {
      const out = parseNotification(Buffer.from(c.body), NOW, DOOR);
      const ledgerEvent = LEDGER_EVENTS.has(c.eventType) && c.priority === 'INFO';
      expect(out.kind).toBe(ledgerEvent ? 'image' : 'ignored');
      if (out.kind === 'image') {
        const p = c.decoded.payload as Record<string, any>;
        expect(out.event).toMatchObject({
          messageId: c.decoded.message_id,
          eventType: c.eventType,
          projectId: p.owner,
          imageId: p.id,
          status: p.status,
          size: p.size,
          createdAt: Date.parse(p.created_at) / 1000,
          updatedAt: Date.parse(p.updated_at) / 1000,
          deleted: c.eventType === 'image.delete',
        });
        expect(out.event.timestamp).toBe(osloTimestampMicros(c.decoded.timestamp));
      } else if (out.kind === 'ignored') {
        expect(out.messageId).toBe(c.decoded.message_id);
        expect(out.reason).toMatch(c.eventType);
      }
    });
  }

  it('reads os_glance_importing_to_stores from the stored property, as Glance counts it', () => {
    const importing = parseNotification(rawBody('image.update__10'), NOW, DOOR);
    expect(importing.kind === 'image' && importing.event.importing).toBe('file');
    const done = parseNotification(rawBody('image.update__11'), NOW, DOOR);
    expect(done.kind === 'image' && done.event.importing).toBe('');
  });

  it('falls back to the top-level list of image.prepare when the property is absent', () => {
    const msg = inner(rawBody('image.prepare__2'));
    delete msg.payload.properties.os_glance_importing_to_stores;
    const out = parseNotification(envelope(msg), NOW, DOOR);
    expect(out.kind === 'image' && out.event.importing).toBe('file');
  });
});

describe('the two wire forms', () => {
  it('accepts the older unwrapped body (oslo "messaging" driver) with the same result', () => {
    const body = rawBody('image.create');
    const unwrapped = JSON.stringify(inner(body));
    expect(parseNotification(unwrapped, NOW, DOOR)).toEqual(parseNotification(body, NOW, DOOR));
  });

  it('accepts a v1-API payload without tags and visibility', () => {
    const msg = inner(rawBody('image.create'));
    delete msg.payload.tags;
    delete msg.payload.visibility;
    expect(parseNotification(envelope(msg), NOW, DOOR).kind).toBe('image');
  });

  it('parses an oslo timestamp with the fraction omitted (a whole second)', () => {
    const msg = inner(rawBody('image.create'));
    msg.timestamp = '2026-11-26 20:27:41';
    const out = parseNotification(envelope(msg), NOW, DOOR);
    expect(out.kind === 'image' && out.event.timestamp).toBe(Date.UTC(2026, 10, 26, 20, 27, 41) * 1000);
  });
});

describe('what the ledger ignores', () => {
  it('ignores an image without an owner: it belongs to no project', () => {
    const msg = inner(rawBody('image.create'));
    msg.payload.owner = null;
    const out = parseNotification(envelope(msg), NOW, DOOR);
    expect(out).toMatchObject({ kind: 'ignored', reason: expect.stringContaining('no owner') });
  });

  it('ignores a failed upload reported at ERROR with a plain-string payload', () => {
    expect(parseNotification(rawBody('image.upload.error'), NOW, DOOR)).toMatchObject({ kind: 'ignored', eventType: 'image.upload' });
  });

  it.each(['image.send', 'image.member.create', 'task.success', 'metadef_namespace.create', 'something.new'])(
    'ignores %s, valid but not about image usage',
    (eventType) => {
      const msg = inner(rawBody('image.create'));
      msg.event_type = eventType;
      expect(parseNotification(envelope(msg), NOW, DOOR)).toMatchObject({ kind: 'ignored', eventType });
    },
  );
});

describe('poison', () => {
  const cases: [string, string, RegExp][] = [
    ['not JSON', 'garbage', /body is not JSON/],
    ['an empty body', '', /body is not JSON/],
    ['a JSON scalar', '42', /oslo message/],
    ['an envelope whose message is not a string', JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': {} }), /oslo envelope.*oslo\.message/],
    ['an envelope whose message is not JSON', JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': '{' }), /oslo\.message is not JSON/],
  ];
  it.each(cases)('rejects %s with a reason', (_name, body, reason) => {
    const out = parseNotification(body, NOW, DOOR);
    expect(out.kind).toBe('invalid');
    expect(out.kind === 'invalid' && out.reason).toMatch(reason);
  });

  const edits: [string, (m: Record<string, any>) => void, RegExp][] = [
    ['no message_id', (m) => delete m.message_id, /message_id/],
    ['a timestamp with a zone', (m) => (m.timestamp = '2026-11-26T20:27:41Z'), /timestamp/],
    ['an impossible date', (m) => (m.timestamp = '2026-02-30 10:00:00'), /timestamp/],
    ['a payload that is a string', (m) => (m.payload = 'hello'), /payload/],
    ['no image id', (m) => delete m.payload.id, /payload\.id/],
    ['a negative size', (m) => (m.payload.size = -1), /payload\.size/],
    ['a created_at that is not a time', (m) => (m.payload.created_at = 'yesterday'), /payload\.created_at/],
    ['no status', (m) => delete m.payload.status, /payload\.status/],
    // The door: everything the ledger stores is bounded and printable before a store sees it.
    ['an image id that is not a UUID', (m) => (m.payload.id = 'image-1'), /payload\.id: expected an image id as Glance makes it, a UUID/],
    ['an image id with a NUL byte', (m) => (m.payload.id = '94c33273-4702-45ad-a25b-17a3ac735de\u0000'), /payload\.id: expected .* UUID/],
    ['an image id without dashes', (m) => (m.payload.id = '94c33273470245ada25b17a3ac735dee'), /payload\.id/],
    ['an owner with a control character', (m) => (m.payload.owner = 'demo\u001b[31m'), /payload\.owner: expected a project id: 1 to 64/],
    ['an owner of 65 characters', (m) => (m.payload.owner = 'a'.repeat(65)), /payload\.owner: expected a project id/],
    ['an owner with a lone surrogate', (m) => (m.payload.owner = 'ab\ud800'), /payload\.owner/],
    ['a size over 1 PiB', (m) => (m.payload.size = 2 ** 50 + 1), /payload\.size: expected a size in bytes of at most 1 PiB/],
    ['a size that is not an integer', (m) => (m.payload.size = 1.5), /payload\.size/],
    ['a status that is not a word', (m) => (m.payload.status = 'queued\u0000'), /payload\.status: expected a Glance image status/],
    ['a 300 KB message_id', (m) => (m.message_id = 'x'.repeat(300_000)), /message_id: expected oslo's message id, 1 to 255/],
    ['February 30th in created_at', (m) => (m.payload.created_at = '2026-02-30T10:00:00Z'), /payload\.created_at: expected an ISO time .*real calendar date/],
    ['minute 60 in the oslo timestamp', (m) => (m.timestamp = '2026-11-26 10:60:00'), /timestamp/],
    ['hour 24 in updated_at', (m) => (m.payload.updated_at = '2026-11-26T24:00:00Z'), /payload\.updated_at/],
    ['a deleted_at that is not a time', (m) => (m.payload.deleted_at = 'never'), /payload\.deleted_at/],
    [
      'a 2 KB os_glance_importing_to_stores',
      (m) => (m.payload.properties = { os_glance_importing_to_stores: 'x'.repeat(2048) }),
      /os_glance_importing_to_stores: expected store names/,
    ],
    [
      'a NUL byte in os_glance_importing_to_stores',
      (m) => (m.payload.properties = { os_glance_importing_to_stores: 'file\u0000' }),
      /os_glance_importing_to_stores/,
    ],
  ];
  it.each(edits)('rejects an image.create with %s, naming the field', (_name, edit, reason) => {
    const msg = inner(rawBody('image.create'));
    edit(msg);
    const out = parseNotification(envelope(msg), NOW, DOOR);
    expect(out.kind).toBe('invalid');
    expect(out.kind === 'invalid' && out.reason).toMatch(reason);
  });
});

describe('the door: size, calendar and the clock', () => {
  it('reads oslo year 0050 as the year 50, not 1950, and Glance years as they are', () => {
    expect(osloTimestampMicros('0050-01-01 00:00:00')).toBe(Date.parse('0050-01-01T00:00:00Z') * 1000);
    expect(new Date(osloTimestampMicros('0050-06-15 12:00:00')! / 1000).getUTCFullYear()).toBe(50);
    expect(isoSeconds('0050-06-15T12:00:00Z')! * 1000).toBe(Date.parse('0050-06-15T12:00:00Z'));
    expect(isoSeconds('2024-02-29T00:00:00Z')).toBe(Date.UTC(2024, 1, 29) / 1000);
    expect(isoSeconds('2026-02-29T00:00:00Z')).toBeUndefined();
    expect(osloTimestampMicros('2026-11-26 23:59:60')).toBeUndefined();
  });

  it("accepts an upper-case UUID, which Glance's API lets a user choose at create", () => {
    const msg = inner(rawBody('image.create'));
    msg.payload.id = msg.payload.id.toUpperCase();
    const out = parseNotification(envelope(msg), NOW, DOOR);
    expect(out.kind === 'image' && out.event.imageId).toBe(msg.payload.id);
  });

  it('rejects a body over MAX_MESSAGE_BYTES before parsing it, as text or as bytes', () => {
    const body = rawBody('image.create');
    const limits = { maxMessageBytes: body.length - 1, clockSkewSeconds: 300 };
    for (const b of [body, Buffer.from(body)]) {
      const out = parseNotification(b, NOW, limits);
      expect(out).toEqual({
        kind: 'invalid',
        reason: expect.stringMatching(new RegExp(`^body of ${body.length} bytes is over MAX_MESSAGE_BYTES \\(${body.length - 1}\\)`)),
        event: expect.objectContaining({ eventType: 'image.create' }),
      });
    }
    expect(parseNotification(body, NOW, { ...limits, maxMessageBytes: body.length }).kind).toBe('image');
    // 10 MB of nesting is refused by its size alone, without a JSON.parse.
    const nested = '['.repeat(5_000_000) + ']'.repeat(5_000_000);
    const started = performance.now();
    expect(parseNotification(nested, NOW, DOOR)).toMatchObject({ kind: 'invalid', reason: expect.stringMatching(/MAX_MESSAGE_BYTES/) });
    expect(performance.now() - started).toBeLessThan(200);
  });

  const future: [string, (m: Record<string, any>, t: { oslo: string; iso: string }) => void, RegExp][] = [
    ['oslo timestamp', (m, t) => (m.timestamp = t.oslo), /^image\.create [0-9a-f-]{36}: timestamp "[^"]+" is \d+ s ahead .*CLOCK_SKEW_SECONDS \(300\)/],
    ['created_at', (m, t) => (m.payload.created_at = t.iso), /payload\.created_at "[^"]+" is \d+ s ahead/],
    ['updated_at', (m, t) => (m.payload.updated_at = t.iso), /payload\.updated_at "[^"]+" is \d+ s ahead/],
    ['deleted_at', (m, t) => (m.payload.deleted_at = t.iso), /payload\.deleted_at "[^"]+" is \d+ s ahead/],
  ];
  const at = (ms: number) => {
    const iso = new Date(ms).toISOString();
    return { oslo: iso.replace('T', ' ').replace('Z', ''), iso: iso.replace(/\.\d+Z$/, 'Z') };
  };
  it.each(future)('rejects a %s later than now plus CLOCK_SKEW_SECONDS, and accepts one within it', (_name, edit, reason) => {
    const late = inner(rawBody('image.create'));
    edit(late, at(NOW + 301_000));
    const out = parseNotification(envelope(late), NOW, DOOR);
    expect(out.kind).toBe('invalid');
    expect(out.kind === 'invalid' && out.reason).toMatch(reason);
    const within = inner(rawBody('image.create'));
    edit(within, at(NOW + 299_000));
    expect(parseNotification(envelope(within), NOW, DOOR).kind).toBe('image');
    // A forged image.delete dated 2099, the way a tombstone would be made to win every merge.
    const forged = inner(rawBody('image.delete'));
    edit(forged, { oslo: '2099-01-01 00:00:00', iso: '2099-01-01T00:00:00Z' });
    expect(parseNotification(envelope(forged), NOW, DOOR).kind).toBe('invalid');
  });

  it('rejects a future-dated message whatever its event type: the clock is checked before the ledger is asked', () => {
    const msg = inner(rawBody('image.send'));
    msg.timestamp = '2099-01-01 00:00:00';
    expect(parseNotification(envelope(msg), NOW, DOOR)).toMatchObject({
      kind: 'invalid',
      reason: expect.stringMatching(/^image\.send .*timestamp "2099-01-01 00:00:00"/),
    });
  });
});
