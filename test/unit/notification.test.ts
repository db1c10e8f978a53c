import { describe, expect, it } from 'vitest';
import { LEDGER_EVENTS, parseNotification } from '../../src/notification/parse.js';
import { osloTimestampMicros } from '../../src/notification/schema.js';
import { captures, envelope, inner, rawBody } from '../support/fixtures.js';

describe('parsing the notifications Glance 25.1 really sent', () => {
  const all = captures();

  it('has the 36 captured bodies of the lab run', () => {
    expect(all).toHaveLength(36);
  });

  for (const c of all) {
    it(`${c.file}: ${c.eventType} at ${c.priority}`, () => {
      const out = parseNotification(Buffer.from(c.body));
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
    const importing = parseNotification(rawBody('image.update__10'));
    expect(importing.kind === 'image' && importing.event.importing).toBe('file');
    const done = parseNotification(rawBody('image.update__11'));
    expect(done.kind === 'image' && done.event.importing).toBe('');
  });

  it('falls back to the top-level list of image.prepare when the property is absent', () => {
    const msg = inner(rawBody('image.prepare__2'));
    delete msg.payload.properties.os_glance_importing_to_stores;
    const out = parseNotification(envelope(msg));
    expect(out.kind === 'image' && out.event.importing).toBe('file');
  });
});

describe('the two wire forms', () => {
  it('accepts the older unwrapped body (oslo "messaging" driver) with the same result', () => {
    const body = rawBody('image.create');
    const unwrapped = JSON.stringify(inner(body));
    expect(parseNotification(unwrapped)).toEqual(parseNotification(body));
  });

  it('accepts a v1-API payload without tags and visibility', () => {
    const msg = inner(rawBody('image.create'));
    delete msg.payload.tags;
    delete msg.payload.visibility;
    expect(parseNotification(envelope(msg)).kind).toBe('image');
  });

  it('parses an oslo timestamp with the fraction omitted (a whole second)', () => {
    const msg = inner(rawBody('image.create'));
    msg.timestamp = '2026-11-26 20:27:41';
    const out = parseNotification(envelope(msg));
    expect(out.kind === 'image' && out.event.timestamp).toBe(Date.UTC(2026, 10, 26, 20, 27, 41) * 1000);
  });
});

describe('what the ledger ignores', () => {
  it('ignores an image without an owner: it belongs to no project', () => {
    const msg = inner(rawBody('image.create'));
    msg.payload.owner = null;
    const out = parseNotification(envelope(msg));
    expect(out).toMatchObject({ kind: 'ignored', reason: expect.stringContaining('no owner') });
  });

  it('ignores a failed upload reported at ERROR with a plain-string payload', () => {
    expect(parseNotification(rawBody('image.upload.error'))).toMatchObject({ kind: 'ignored', eventType: 'image.upload' });
  });

  it.each(['image.send', 'image.member.create', 'task.success', 'metadef_namespace.create', 'something.new'])(
    'ignores %s, valid but not about image usage',
    (eventType) => {
      const msg = inner(rawBody('image.create'));
      msg.event_type = eventType;
      expect(parseNotification(envelope(msg))).toMatchObject({ kind: 'ignored', eventType });
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
    const out = parseNotification(body);
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
  ];
  it.each(edits)('rejects an image.create with %s, naming the field', (_name, edit, reason) => {
    const msg = inner(rawBody('image.create'));
    edit(msg);
    const out = parseNotification(envelope(msg));
    expect(out.kind).toBe('invalid');
    expect(out.kind === 'invalid' && out.reason).toMatch(reason);
  });
});
