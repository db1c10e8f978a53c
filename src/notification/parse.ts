import type { z } from 'zod';
import { ImagePayload, OsloEnvelope, OsloMessage, isoSeconds, osloTimestampMicros } from './schema.js';

/** One image's state as one notification tells it. Times are numbers so ordering is exact. */
export interface ImageEvent {
  messageId: string;
  eventType: string;
  projectId: string;
  imageId: string;
  status: string;
  /** Bytes; null while Glance does not know it yet (queued, saving). */
  size: number | null;
  /** Epoch seconds (Glance keeps whole seconds). */
  createdAt: number;
  updatedAt: number;
  /** oslo `timestamp` in epoch microseconds: breaks ties between equal `updatedAt`. */
  timestamp: number;
  /** `os_glance_importing_to_stores`: '' when no import or copy is running. */
  importing: string;
  protected: boolean;
  /** `image.delete`: a tombstone, final whatever arrives before or after it. */
  deleted: boolean;
}

export type ParseOutcome =
  | { kind: 'image'; event: ImageEvent }
  | { kind: 'ignored'; messageId: string; eventType: string; reason: string }
  | { kind: 'invalid'; reason: string };

/** Event types that carry an image's state in the full image payload. */
export const LEDGER_EVENTS: ReadonlySet<string> = new Set([
  'image.create',
  'image.update',
  'image.prepare',
  'image.upload',
  'image.activate',
  'image.delete',
]);

function describeIssues(error: z.ZodError, prefix: string): string {
  return error.issues
    .slice(0, 3)
    .map((i) => `${[prefix, ...i.path.map(String)].filter(Boolean).join('.') || '(root)'}: ${i.message}`)
    .join('; ');
}

function decodeJson(text: string, what: string): { ok: true; value: unknown } | { ok: false; reason: string } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    return { ok: false, reason: `${what} is not JSON (${(err as Error).message})` };
  }
}

function importingStores(payload: ImagePayload): string {
  // The stored property (a comma-separated string) is what Glance's usage query reads; the
  // top-level list of image.prepare/upload is only a view of it, used when the property is absent.
  const prop = payload.properties?.['os_glance_importing_to_stores'];
  if (typeof prop === 'string') return prop;
  const top = payload.os_glance_importing_to_stores;
  if (Array.isArray(top)) return top.join(',');
  return typeof top === 'string' ? top : '';
}

/**
 * Raw AMQP body in, a typed image event or a typed rejection out. Never throws: a consumer must
 * be able to dead-letter anything it is handed.
 *
 * @example
 *   const out = parseNotification(delivery.content);
 *   if (out.kind === 'invalid') deadLetter(delivery, out.reason);
 */
export function parseNotification(body: Uint8Array | string): ParseOutcome {
  const text = typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
  const outer = decodeJson(text, 'body');
  if (!outer.ok) return { kind: 'invalid', reason: outer.reason };

  let inner: unknown = outer.value;
  if (inner !== null && typeof inner === 'object' && 'oslo.message' in inner) {
    const envelope = OsloEnvelope.safeParse(inner);
    if (!envelope.success) return { kind: 'invalid', reason: `oslo envelope: ${describeIssues(envelope.error, '')}` };
    const decoded = decodeJson(envelope.data['oslo.message'], 'oslo.message');
    if (!decoded.ok) return { kind: 'invalid', reason: decoded.reason };
    inner = decoded.value;
  }

  const msg = OsloMessage.safeParse(inner);
  if (!msg.success) return { kind: 'invalid', reason: `oslo message: ${describeIssues(msg.error, '')}` };
  const { message_id: messageId, event_type: eventType, priority, payload, timestamp } = msg.data;

  if (!LEDGER_EVENTS.has(eventType)) {
    return { kind: 'ignored', messageId, eventType, reason: `${eventType} does not change image usage` };
  }
  if (priority.toUpperCase() !== 'INFO') {
    // A failed upload is reported at ERROR with a plain-string payload; the image's real state
    // follows in an INFO image.update, so the error itself carries nothing to count.
    return { kind: 'ignored', messageId, eventType, reason: `${eventType} at priority ${priority} carries no image state` };
  }
  const image = ImagePayload.safeParse(payload);
  if (!image.success) return { kind: 'invalid', reason: `${eventType} ${messageId}: ${describeIssues(image.error, 'payload')}` };
  const p = image.data;
  if (p.owner === null) {
    return { kind: 'ignored', messageId, eventType, reason: `image ${p.id} has no owner, so it counts against no project` };
  }
  const createdAt = isoSeconds(p.created_at)!;
  return {
    kind: 'image',
    event: {
      messageId,
      eventType,
      projectId: p.owner,
      imageId: p.id,
      status: p.status,
      size: p.size ?? null,
      createdAt,
      updatedAt: p.updated_at ? isoSeconds(p.updated_at)! : createdAt,
      timestamp: osloTimestampMicros(timestamp)!,
      importing: importingStores(p),
      protected: p.protected ?? false,
      deleted: eventType === 'image.delete' || p.deleted === true,
    },
  };
}
