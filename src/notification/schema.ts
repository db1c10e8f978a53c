import { z } from 'zod';

/**
 * Wire formats of Glance notifications as oslo.messaging publishes them.
 * Facts from Glance 25.1 captures (test/fixtures): the messagingv2 driver wraps the message in an
 * envelope whose `oslo.message` is a JSON *string*; the older `messaging` driver sends the inner
 * message as the body itself. Glance notifies with an empty context, so no `_context_*` keys exist
 * and the project comes from the payload alone.
 *
 * These schemas are the definition. Each has a plain guard below (`isOsloEnvelope`,
 * `checkOsloMessage`, `checkImagePayload`) that accepts exactly the same values faster; change both.
 */

export const OsloEnvelope = z.object({
  'oslo.version': z.string(),
  'oslo.message': z.string(),
});
export type OsloEnvelope = z.infer<typeof OsloEnvelope>;

/** oslo's `timestamp`: UTC, space separator, no zone, microseconds only when non-zero. */
const OSLO_TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?$/;

/** Microseconds since the epoch: exact in a double until the year 2255. */
export function osloTimestampMicros(value: string): number | undefined {
  const m = OSLO_TIMESTAMP.exec(value);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac] = m;
  const ms = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s));
  if (Number.isNaN(ms) || new Date(ms).getUTCDate() !== Number(d)) return undefined;
  return ms * 1000 + Number((frac ?? '').padEnd(6, '0'));
}

export const OsloTimestamp = z
  .string()
  .refine((v) => osloTimestampMicros(v) !== undefined, {
    message: 'expected an oslo timestamp like "2026-11-26 20:27:41.984542" (UTC, no zone)',
  });

/** Glance payload times: ISO 8601 with `Z` and whole seconds ("2026-11-26T20:27:41Z"). */
const ISO_SECONDS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]00:?00)?$/;

export function isoSeconds(value: string): number | undefined {
  if (!ISO_SECONDS.test(value)) return undefined;
  // A zone-less value is UTC in Glance (it serialises naive UTC datetimes).
  const withZone = /Z$|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`;
  const ms = Date.parse(withZone);
  return Number.isNaN(ms) ? undefined : Math.floor(ms / 1000);
}

export const IsoTime = z
  .string()
  .refine((v) => isoSeconds(v) !== undefined, { message: 'expected an ISO time like "2026-11-26T20:27:41Z"' });

export const OsloMessage = z.object({
  message_id: z.string().min(1),
  publisher_id: z.string(),
  event_type: z.string().min(1),
  priority: z.string(),
  payload: z.unknown(),
  timestamp: OsloTimestamp,
});
export type OsloMessage = z.infer<typeof OsloMessage>;

/**
 * The image payload (glance/notifier.py format_image_notification). Only what the ledger needs is
 * required; v1-API payloads lack `tags` and `visibility`, so neither is read.
 */
export const ImagePayload = z.object({
  id: z.string().min(1),
  owner: z.string().min(1).nullable(),
  status: z.string().min(1),
  size: z.number().int().nonnegative().nullable().optional(),
  created_at: IsoTime,
  updated_at: IsoTime.nullable().optional(),
  deleted: z.boolean().optional(),
  protected: z.boolean().optional(),
  properties: z.record(z.string(), z.unknown()).nullable().optional(),
  // image.prepare / image.upload carry it at top level as a list; the stored property is a
  // comma-separated string inside `properties`.
  os_glance_importing_to_stores: z.union([z.array(z.string()), z.string()]).nullable().optional(),
});
export type ImagePayload = z.infer<typeof ImagePayload>;

// ---------------------------------------------------------------------------------------------
// Plain guards: exactly what the schemas above accept, checked without zod.
//
// Why they exist: on the bench's realistic stream (bench/README.md, "Where the time goes"),
// `safeParse` of OsloMessage and ImagePayload was 30% of the whole in-memory pipeline, and every
// timestamp was parsed twice (in the `.refine`, then again to read its value), another 10%. Nearly
// every body on the bus is well-formed, so these guards settle the common case and read each
// timestamp once. The schemas stay the source of truth: the types come from them, and a body a
// guard turns down goes through them (parse.ts), so every rejection is worded by zod alone.
// test/unit/parse-fast.test.ts holds the two to the same outcome on a generated stream and on a
// battery of poison bodies. A change to a schema must be made to its guard too.
//
// The guards are for values made by JSON.parse: there every object is a plain object, no value is
// undefined, and no number is NaN or infinite.

type JsonObject = Record<string, unknown>;

/** What z.object and z.record accept as an object, for a JSON value. */
function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** z.string().min(1) */
function isNonEmptyString(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0;
}

/** z.string() */
function isString(value: unknown): value is string {
  return typeof value === 'string';
}

// Consecutive messages mostly fall in the same second: its epoch value is kept, and then only the
// fraction is read. The values are those of osloTimestampMicros, which parses the second.
let lastOsloSecond = '';
let lastOsloSecondMicros: number | undefined;

function osloTimestampMicrosOnce(value: string): number | undefined {
  // "YYYY-MM-DD HH:MM:SS" is 19 characters; a fraction follows only after a '.'.
  const whole = value.length === 19;
  if (!whole && value.charCodeAt(19) !== 46) return undefined;
  const second = whole ? value : value.slice(0, 19);
  if (second !== lastOsloSecond) {
    lastOsloSecond = second;
    lastOsloSecondMicros = osloTimestampMicros(second);
  }
  const base = lastOsloSecondMicros;
  if (base === undefined || whole) return base;
  // 1 to 6 ASCII digits of fraction, right-padded with zeros to microseconds.
  const digits = value.length - 20;
  if (digits < 1 || digits > 6) return undefined;
  let micros = 0;
  for (let i = 20; i < 26; i++) {
    const digit = i < value.length ? value.charCodeAt(i) - 48 : 0;
    if (digit < 0 || digit > 9) return undefined;
    micros = micros * 10 + digit;
  }
  return base + micros;
}

// Two payload times per message: `updated_at` is mostly the previous message's second, and
// `created_at` equals it on a create. Two entries keep both.
let isoKeyA = '';
let isoValueA: number | undefined;
let isoKeyB = '';
let isoValueB: number | undefined;

function isoSecondsOnce(value: string): number | undefined {
  if (value === isoKeyA) return isoValueA;
  if (value === isoKeyB) return isoValueB;
  isoKeyB = isoKeyA;
  isoValueB = isoValueA;
  isoKeyA = value;
  isoValueA = isoSeconds(value);
  return isoValueA;
}

/** Accepts exactly what OsloEnvelope accepts. */
export function isOsloEnvelope(value: unknown): value is OsloEnvelope {
  return isJsonObject(value) && isString(value['oslo.version']) && isString(value['oslo.message']);
}

/** A message OsloMessage accepts, with its `timestamp` in epoch microseconds. */
export interface CheckedOsloMessage {
  message: OsloMessage;
  timestampMicros: number;
}

/** Accepts exactly what OsloMessage accepts (undefined otherwise), reading the timestamp once. */
export function checkOsloMessage(value: unknown): CheckedOsloMessage | undefined {
  if (!isJsonObject(value)) return undefined;
  const { message_id, publisher_id, event_type, priority, payload, timestamp } = value;
  if (!isNonEmptyString(message_id) || !isString(publisher_id) || !isNonEmptyString(event_type) || !isString(priority)) return undefined;
  // z.unknown() as an object key still requires the key: absent is undefined, which JSON never gives.
  if (payload === undefined || !isString(timestamp)) return undefined;
  const timestampMicros = osloTimestampMicrosOnce(timestamp);
  if (timestampMicros === undefined) return undefined;
  return { message: value as OsloMessage, timestampMicros };
}

/** A payload ImagePayload accepts, with its times in epoch seconds. */
export interface CheckedImagePayload {
  payload: ImagePayload;
  createdAt: number;
  /** undefined when `updated_at` is null or absent. */
  updatedAt: number | undefined;
}

/** Accepts exactly what ImagePayload accepts (undefined otherwise), reading each time once. */
export function checkImagePayload(value: unknown): CheckedImagePayload | undefined {
  if (!isJsonObject(value)) return undefined;
  const { id, owner, status, size, created_at, updated_at, deleted, properties } = value;
  if (!isNonEmptyString(id) || !(owner === null || isNonEmptyString(owner)) || !isNonEmptyString(status)) return undefined;
  // z.number().int() is a safe integer.
  if (!(size === undefined || size === null || (Number.isSafeInteger(size) && (size as number) >= 0))) return undefined;
  const isProtected = value['protected'];
  if (!(deleted === undefined || typeof deleted === 'boolean') || !(isProtected === undefined || typeof isProtected === 'boolean')) return undefined;
  if (!(properties === undefined || properties === null || isJsonObject(properties))) return undefined;
  const stores = value['os_glance_importing_to_stores'];
  if (!(stores === undefined || stores === null || isString(stores) || (Array.isArray(stores) && stores.every(isString)))) return undefined;
  if (!isString(created_at)) return undefined;
  const createdAt = isoSecondsOnce(created_at);
  if (createdAt === undefined) return undefined;
  let updatedAt: number | undefined;
  if (updated_at !== undefined && updated_at !== null) {
    if (!isString(updated_at)) return undefined;
    updatedAt = isoSecondsOnce(updated_at);
    if (updatedAt === undefined) return undefined;
  }
  return { payload: value as ImagePayload, createdAt, updatedAt };
}
