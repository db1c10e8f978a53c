import type { z } from 'zod';
import {
  ImagePayload,
  OsloEnvelope,
  OsloMessage,
  checkImagePayload,
  checkOsloMessage,
  isOsloEnvelope,
  isoSeconds,
  osloTimestampMicros,
} from './schema.js';

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

function bodyText(body: Uint8Array | string): string {
  return typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
}

/** The messagingv2 form: the oslo message is a JSON string inside the envelope. */
function isWrapped(value: unknown): value is object {
  return value !== null && typeof value === 'object' && 'oslo.message' in value;
}

/** A valid message whose event or priority the ledger has no use for. */
function ignoredMessage(messageId: string, eventType: string, priority: string): ParseOutcome | undefined {
  if (!LEDGER_EVENTS.has(eventType)) {
    return { kind: 'ignored', messageId, eventType, reason: `${eventType} does not change image usage` };
  }
  if (priority.toUpperCase() !== 'INFO') {
    // A failed upload is reported at ERROR with a plain-string payload; the image's real state
    // follows in an INFO image.update, so the error itself carries nothing to count.
    return { kind: 'ignored', messageId, eventType, reason: `${eventType} at priority ${priority} carries no image state` };
  }
  return undefined;
}

/** A valid ledger message with a valid image payload; times already read. */
function imageOutcome(messageId: string, eventType: string, p: ImagePayload, createdAt: number, updatedAt: number, timestamp: number): ParseOutcome {
  if (p.owner === null) {
    return { kind: 'ignored', messageId, eventType, reason: `image ${p.id} has no owner, so it counts against no project` };
  }
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
      updatedAt,
      timestamp,
      importing: importingStores(p),
      protected: p.protected ?? false,
      deleted: eventType === 'image.delete' || p.deleted === true,
    },
  };
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
  const text = bodyText(body);
  // Nearly every body is well-formed and the plain guards settle it; any other goes through the
  // schemas, which word the rejection. The outcome is parseBySchemas' either way.
  return parseWellFormed(text) ?? parseBySchemas(text);
}

/**
 * The outcome of a body the schemas accept, decided with the plain guards of schema.ts alone
 * (no zod, each timestamp read once); undefined for a body they do not accept, which only the
 * schemas can word a rejection for.
 */
export function parseWellFormed(text: string): ParseOutcome | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (isWrapped(value)) {
    if (!isOsloEnvelope(value)) return undefined;
    try {
      value = JSON.parse(value['oslo.message']);
    } catch {
      return undefined;
    }
  }
  const checked = checkOsloMessage(value);
  if (!checked) return undefined;
  const { message_id: messageId, event_type: eventType, priority, payload } = checked.message;
  const ignored = ignoredMessage(messageId, eventType, priority);
  if (ignored) return ignored;
  const image = checkImagePayload(payload);
  if (!image) return undefined;
  return imageOutcome(messageId, eventType, image.payload, image.createdAt, image.updatedAt ?? image.createdAt, checked.timestampMicros);
}

/**
 * The same parse with the zod schemas alone: the reference that parseNotification must equal
 * (test/unit/parse-fast.test.ts), and the path that words every rejection. parseNotification
 * only hands it bodies the guards turned down, all of which it rejects (the test checks that too),
 * so the times it reads twice (in the `.refine`, then for the event) cost nothing in production.
 */
export function parseBySchemas(body: Uint8Array | string): ParseOutcome {
  const text = bodyText(body);
  const outer = decodeJson(text, 'body');
  if (!outer.ok) return { kind: 'invalid', reason: outer.reason };

  let inner: unknown = outer.value;
  if (isWrapped(inner)) {
    const envelope = OsloEnvelope.safeParse(inner);
    if (!envelope.success) return { kind: 'invalid', reason: `oslo envelope: ${describeIssues(envelope.error, '')}` };
    const decoded = decodeJson(envelope.data['oslo.message'], 'oslo.message');
    if (!decoded.ok) return { kind: 'invalid', reason: decoded.reason };
    inner = decoded.value;
  }

  const msg = OsloMessage.safeParse(inner);
  if (!msg.success) return { kind: 'invalid', reason: `oslo message: ${describeIssues(msg.error, '')}` };
  const { message_id: messageId, event_type: eventType, priority, payload, timestamp } = msg.data;
  const ignored = ignoredMessage(messageId, eventType, priority);
  if (ignored) return ignored;
  const image = ImagePayload.safeParse(payload);
  if (!image.success) return { kind: 'invalid', reason: `${eventType} ${messageId}: ${describeIssues(image.error, 'payload')}` };
  const p = image.data;
  const createdAt = isoSeconds(p.created_at)!;
  return imageOutcome(messageId, eventType, p, createdAt, p.updated_at ? isoSeconds(p.updated_at)! : createdAt, osloTimestampMicros(timestamp)!);
}
