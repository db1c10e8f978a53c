import { describe, expect, it } from 'vitest';
import { pipelineOf } from '../../src/composition-root.js';
import { parseNotification } from '../../src/notification/parse.js';
import { SCAN_BYTES, scanMessage } from '../../src/notification/scan.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import { envelope, inner, rawBody } from '../support/fixtures.js';

/*
 * A tenant gives its images properties of a megabyte or more: Glance takes them, and every
 * notification of such an image is over MAX_MESSAGE_BYTES. It is dead-lettered, but its creates
 * must still count: the scan reads the image's state from the body's first bytes.
 */

const NOW = Date.UTC(2026, 11, 1);
const DOOR = { maxMessageBytes: 1024 * 1024, clockSkewSeconds: 300 };
const create = inner(rawBody('image.create'));

/** The captured image.create, with `properties` of about `bytes` bytes of hostile text. */
function fat(bytes: number, message: Record<string, any> = create): string {
  const hostile = '"\\\u0000\u2028é' + '{"owner": "victim"} \\" \\\\u0041 ';
  const properties = { big: hostile.repeat(Math.ceil(bytes / hostile.length)).slice(0, bytes), owner_hint: 'victim' };
  return envelope({ ...message, payload: { ...message.payload, properties } });
}

describe('a notification over MAX_MESSAGE_BYTES is still a trigger', () => {
  it('is dead-lettered, and counts the image of the owner Glance wrote, from a scan of its first bytes', () => {
    const body = fat(1_200_000);
    expect(Buffer.byteLength(body)).toBeGreaterThan(DOOR.maxMessageBytes);
    for (const b of [body, Buffer.from(body)]) {
      const out = parseNotification(b, NOW, DOOR);
      expect(out).toMatchObject({ kind: 'invalid', reason: expect.stringMatching(/over MAX_MESSAGE_BYTES .*counted from a scan/) });
      expect(out.kind === 'invalid' && out.event).toMatchObject({
        eventType: 'image.create',
        projectId: create.payload.owner,
        imageId: create.payload.id,
        status: 'queued',
        protected: false,
        deleted: false,
        importing: '',
      });
    }
  });

  it("reads the payload's own owner, never one inside the properties, whatever their order", () => {
    const { owner, properties: _own, ...rest } = create.payload;
    // A forger (or a future Glance) puts the properties first, with an owner key inside them.
    const reordered = { ...create, payload: { properties: { owner: 'victim', note: 'x'.repeat(1_100_000) }, ...rest, owner } };
    const scanned = scanMessage(envelope(reordered));
    expect(scanned?.payload.owner).toBeUndefined(); // past the scan: the event is not made up
    const out = parseNotification(envelope(reordered), NOW, DOOR);
    expect(out).toMatchObject({ kind: 'invalid' });
    expect(out.kind === 'invalid' && out.event).toBe(undefined);
    const small = { ...create, payload: { properties: { owner: 'victim' }, ...rest, owner } };
    expect(scanMessage(envelope(small))?.payload.owner).toBe(owner);
  });

  it('reads the bare (unwrapped) form too', () => {
    const body = JSON.stringify({ ...create, payload: { ...create.payload, properties: { big: 'y'.repeat(1_200_000) } } });
    const out = parseNotification(body, NOW, DOOR);
    expect(out.kind === 'invalid' && out.event?.imageId).toBe(create.payload.id);
  });

  it('never throws, wherever the scan cuts an escape, and gives either the true fields or none', () => {
    for (let pad = 0; pad < 40; pad++) {
      // The name pushes every later byte along, so the cut at SCAN_BYTES lands on each kind of escape.
      const body = envelope({ ...create, payload: { ...create.payload, name: '\\"é\u0001'.repeat(pad), properties: { big: '\\u"'.repeat(SCAN_BYTES) } } });
      const scanned = scanMessage(body);
      expect(scanned?.payload.id).toBe(create.payload.id);
      expect(scanned?.payload.owner).toBe(create.payload.owner);
    }
    for (const junk of ['', '{', '{"oslo.message": 5}', '{"oslo.message": "{\\"message_id', '[1,2', 'x'.repeat(SCAN_BYTES * 2), '\u0000'.repeat(100)]) {
      expect(() => scanMessage(junk)).not.toThrow();
      expect(scanMessage(junk)?.payload.owner).toBeUndefined();
    }
  });

  it('checks what it read as a parsed payload is checked: a forged owner id or a date from the future makes no event', () => {
    const bad = parseNotification(fat(1_200_000, { ...create, payload: { ...create.payload, owner: 'not a project id!' } }), NOW, DOOR);
    expect(bad.kind === 'invalid' && bad.event).toBe(undefined);
    const future = parseNotification(
      fat(1_200_000, { ...create, payload: { ...create.payload, created_at: '2099-01-01T00:00:00Z', updated_at: '2099-01-01T00:00:00Z' } }),
      NOW,
      DOOR,
    );
    expect(future.kind === 'invalid' && future.event).toBe(undefined);
  });

  it('through the pipeline: the body is invalid (dead-lettered), its image is in the ledger, its project is decided', async () => {
    const store = new MemoryStore();
    const pipeline = pipelineOf({ store, limits: new StaticLimits({ image_count_total: 0 }), clock: () => NOW });
    const result = await pipeline.ingest([fat(1_200_000)]);
    expect(result.outcomes.map((o) => o.result)).toEqual(['invalid']);
    expect(result.projects).toEqual([create.payload.owner]);
    expect((await store.usage(create.payload.owner)).image_count_total).toBe(1);
    expect((await pipeline.evaluate(create.payload.owner)).toDelete).toEqual([create.payload.id]);
    // A redelivery names the project again, and counts nothing twice.
    expect((await pipeline.ingest([fat(1_200_000)])).projects).toEqual([create.payload.owner]);
    expect((await store.usage(create.payload.owner)).image_count_total).toBe(1);
  });
});
