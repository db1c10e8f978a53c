import {
  ImagePayload,
  OsloEnvelope,
  OsloMessage,
  checkImagePayload,
  checkOsloMessage,
  isOsloEnvelope,
  isoSeconds,
  MESSAGE_ID,
  osloTimestampMicros,
} from './schema.js';
import { scanMessage } from './scan.js';
import { describeIssues } from '../zod-issues.js';

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

/**
 * What the door admits besides the schemas: settings, handed in so the core reads no environment
 * (Config.door; their defaults are the config schema's, ENV_DEFAULTS in src/config.ts).
 */
export interface DoorLimits {
  /** MAX_MESSAGE_BYTES: a larger body is invalid before it is decoded or parsed. */
  maxMessageBytes: number;
  /** CLOCK_SKEW_SECONDS: how far ahead of the enforcer's clock a message's times may be. */
  clockSkewSeconds: number;
}

/** The longest `os_glance_importing_to_stores` believed: a few store names, comma-separated. */
const MAX_IMPORTING_CHARS = 1024;
/** Control characters and lone surrogates: nothing a store name has, everything a store chokes on. */
const UNPRINTABLE = /[\p{Cc}\p{Cs}]/u;

export type ParseOutcome =
  | { kind: 'image'; event: ImageEvent }
  | { kind: 'ignored'; messageId: string; eventType: string; reason: string }
  /**
   * `event`: a body over MAX_MESSAGE_BYTES, still dead-lettered, whose image state a bounded scan
   * could read (src/notification/scan.ts): its project is decided on like any other's.
   */
  | { kind: 'invalid'; reason: string; event?: ImageEvent };

/** Event types that carry an image's state in the full image payload. */
export const LEDGER_EVENTS: ReadonlySet<string> = new Set(['image.create', 'image.update', 'image.prepare', 'image.upload', 'image.activate', 'image.delete']);

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
  const prop = payload.properties?.os_glance_importing_to_stores;
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

function byteLength(body: Uint8Array | string): number {
  return typeof body === 'string' ? Buffer.byteLength(body, 'utf8') : body.byteLength;
}

/**
 * A body over MAX_MESSAGE_BYTES, found before it costs a decode or a JSON.parse. It is invalid
 * (dead-lettered), but still a trigger: a bounded scan of its first bytes reads the image state
 * Glance put before the properties, so a tenant cannot hide its creates behind megabytes of them.
 */
function oversized(body: Uint8Array | string, nowMs: number, limits: DoorLimits): ParseOutcome | undefined {
  // A string has at most 3 UTF-8 bytes per UTF-16 unit: most bodies are settled without counting.
  if (typeof body === 'string' && body.length * 3 <= limits.maxMessageBytes) return undefined;
  const bytes = byteLength(body);
  if (bytes <= limits.maxMessageBytes) return undefined;
  const reason = `body of ${bytes} bytes is over MAX_MESSAGE_BYTES (${limits.maxMessageBytes}); Glance's notifications are a few KiB, raise MAX_MESSAGE_BYTES only if images really carry that many properties`;
  const event = scannedEvent(body, nowMs, limits);
  return event
    ? { kind: 'invalid', reason: `${reason} (its image ${event.imageId} of project ${event.projectId} is counted from a scan of its first bytes)`, event }
    : { kind: 'invalid', reason };
}

/**
 * The ledger event of a body too large to parse, from the fields a bounded scan read, checked as a
 * parsed payload is (ids, times, the clock skew); undefined when the scan did not reach them. The
 * oslo timestamp comes after the payload, out of the scan's reach: the payload's `updated_at`
 * orders the event instead.
 */
function scannedEvent(body: Uint8Array | string, nowMs: number, limits: DoorLimits): ImageEvent | undefined {
  const scanned = scanMessage(body);
  if (!scanned) return undefined;
  const { message_id: messageId, event_type: eventType, priority } = scanned;
  if (typeof messageId !== 'string' || !MESSAGE_ID.test(messageId) || typeof eventType !== 'string' || typeof priority !== 'string') return undefined;
  if (ignoredMessage(messageId, eventType, priority)) return undefined;
  const image = checkImagePayload(scanned.payload);
  if (!image) return undefined;
  const outcome = imageOutcome(messageId, eventType, image.payload, image, (image.updatedAt ?? image.createdAt) * 1_000_000, nowMs, limits);
  return outcome.kind === 'image' ? outcome.event : undefined;
}

/**
 * A time later than the enforcer's clock plus CLOCK_SKEW_SECONDS is not believed: a forged
 * image.delete dated 2099 would otherwise win every merge forever (ledger ordering takes the
 * latest time).
 */
function fromTheFuture(
  messageId: string,
  eventType: string,
  field: string,
  value: string,
  atMs: number,
  nowMs: number,
  limits: DoorLimits,
): ParseOutcome | undefined {
  const aheadS = Math.floor((atMs - nowMs) / 1000);
  if (aheadS <= limits.clockSkewSeconds) return undefined;
  return {
    kind: 'invalid',
    reason: `${eventType} ${messageId}: ${field} "${value}" is ${aheadS} s ahead of this enforcer's clock, more than CLOCK_SKEW_SECONDS (${limits.clockSkewSeconds}) allows; forged, or the publisher's clock is wrong (fix it with NTP, or raise CLOCK_SKEW_SECONDS)`,
  };
}

/** The times of one image payload, read; undefined when null or absent. */
interface PayloadTimes {
  createdAt: number;
  updatedAt: number | undefined;
  deletedAt: number | undefined;
}

/** A valid ledger message with a valid image payload; times already read. */
function imageOutcome(
  messageId: string,
  eventType: string,
  p: ImagePayload,
  times: PayloadTimes,
  timestamp: number,
  nowMs: number,
  limits: DoorLimits,
): ParseOutcome {
  const { createdAt, updatedAt, deletedAt } = times;
  const late =
    fromTheFuture(messageId, eventType, 'payload.created_at', p.created_at, createdAt * 1000, nowMs, limits) ??
    (updatedAt === undefined ? undefined : fromTheFuture(messageId, eventType, 'payload.updated_at', p.updated_at!, updatedAt * 1000, nowMs, limits)) ??
    (deletedAt === undefined ? undefined : fromTheFuture(messageId, eventType, 'payload.deleted_at', p.deleted_at!, deletedAt * 1000, nowMs, limits));
  if (late) return late;
  const importing = importingStores(p);
  if (importing.length > MAX_IMPORTING_CHARS || UNPRINTABLE.test(importing)) {
    return {
      kind: 'invalid',
      reason: `${eventType} ${messageId}: payload os_glance_importing_to_stores: expected store names, at most ${MAX_IMPORTING_CHARS} characters without control characters, got ${importing.length} characters`,
    };
  }
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
      updatedAt: updatedAt ?? createdAt,
      timestamp,
      importing,
      protected: p.protected ?? false,
      deleted: eventType === 'image.delete' || p.deleted === true,
    },
  };
}

/**
 * Raw AMQP body in, a typed image event or a typed rejection out. Never throws: a consumer must
 * be able to dead-letter anything it is handed. `nowMs` is the time the message is judged at
 * (the core reads no clock): a message dated past it plus CLOCK_SKEW_SECONDS is invalid.
 *
 * @example
 *   const out = parseNotification(delivery.content, Date.now());
 *   if (out.kind === 'invalid') deadLetter(delivery, out.reason);
 */
export function parseNotification(body: Uint8Array | string, nowMs: number, limits: DoorLimits): ParseOutcome {
  const tooLarge = oversized(body, nowMs, limits);
  if (tooLarge) return tooLarge;
  const text = bodyText(body);
  // Nearly every body is well-formed and the plain guards settle it; any other goes through the
  // schemas, which word the rejection. The outcome is parseBySchemas' either way.
  return parseWellFormed(text, nowMs, limits) ?? parseBySchemas(text, nowMs, limits);
}

/**
 * The outcome of a body (within MAX_MESSAGE_BYTES) the schemas accept, decided with the plain
 * guards derived from them (guard.ts: no zod at run time, each timestamp read once); undefined
 * for a body they do not accept, which only the schemas can word a rejection for.
 */
export function parseWellFormed(text: string, nowMs: number, limits: DoorLimits): ParseOutcome | undefined {
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
  const { message_id: messageId, event_type: eventType, priority, payload, timestamp } = checked.message;
  const late = fromTheFuture(messageId, eventType, 'timestamp', timestamp, checked.timestampMicros / 1000, nowMs, limits);
  if (late) return late;
  const ignored = ignoredMessage(messageId, eventType, priority);
  if (ignored) return ignored;
  const image = checkImagePayload(payload);
  if (!image) return undefined;
  return imageOutcome(messageId, eventType, image.payload, image, checked.timestampMicros, nowMs, limits);
}

/**
 * The same parse with the zod schemas alone: the reference that parseNotification must equal
 * (test/unit/parse-fast.test.ts), and the path that words every rejection. parseNotification
 * only hands it bodies the guards turned down, all of which it rejects (the test checks that too),
 * so the times it reads twice (in the `.refine`, then for the event) cost nothing in production.
 */
export function parseBySchemas(body: Uint8Array | string, nowMs: number, limits: DoorLimits): ParseOutcome {
  const tooLarge = oversized(body, nowMs, limits);
  if (tooLarge) return tooLarge;
  const text = bodyText(body);
  const outer = decodeJson(text, 'body');
  if (!outer.ok) return { kind: 'invalid', reason: outer.reason };

  let inner: unknown = outer.value;
  if (isWrapped(inner)) {
    const envelope = OsloEnvelope.safeParse(inner);
    if (!envelope.success) return { kind: 'invalid', reason: `oslo envelope: ${describeIssues(envelope.error)}` };
    const decoded = decodeJson(envelope.data['oslo.message'], 'oslo.message');
    if (!decoded.ok) return { kind: 'invalid', reason: decoded.reason };
    inner = decoded.value;
  }

  const msg = OsloMessage.safeParse(inner);
  if (!msg.success) return { kind: 'invalid', reason: `oslo message: ${describeIssues(msg.error)}` };
  const { message_id: messageId, event_type: eventType, priority, payload, timestamp } = msg.data;
  const timestampMicros = osloTimestampMicros(timestamp)!;
  const late = fromTheFuture(messageId, eventType, 'timestamp', timestamp, timestampMicros / 1000, nowMs, limits);
  if (late) return late;
  const ignored = ignoredMessage(messageId, eventType, priority);
  if (ignored) return ignored;
  const image = ImagePayload.safeParse(payload);
  if (!image.success) return { kind: 'invalid', reason: `${eventType} ${messageId}: ${describeIssues(image.error, { prefix: 'payload' })}` };
  const p = image.data;
  const times: PayloadTimes = {
    createdAt: isoSeconds(p.created_at)!,
    updatedAt: p.updated_at ? isoSeconds(p.updated_at)! : undefined,
    deletedAt: p.deleted_at ? isoSeconds(p.deleted_at)! : undefined,
  };
  return imageOutcome(messageId, eventType, p, times, timestampMicros, nowMs, limits);
}
