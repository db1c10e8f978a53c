import { z } from 'zod';
import { guardOf } from './guard.js';

/**
 * Wire formats of Glance notifications as oslo.messaging publishes them.
 * Facts from Glance 25.1 captures (test/fixtures): the messagingv2 driver wraps the message in an
 * envelope whose `oslo.message` is a JSON *string*; the older `messaging` driver sends the inner
 * message as the body itself. Glance notifies with an empty context, so no `_context_*` keys exist
 * and the project comes from the payload alone.
 *
 * These schemas are the one definition. The plain guards at the end (`isOsloEnvelope`,
 * `checkOsloMessage`, `checkImagePayload`) are derived from them (guard.ts), so they accept exactly
 * the same values without zod's cost; nothing is written twice.
 */

export const OsloEnvelope = z.object({
  'oslo.version': z.string(),
  'oslo.message': z.string(),
});
export type OsloEnvelope = z.infer<typeof OsloEnvelope>;

/** Days in month `mo` (1-12) of year `y`, proleptic Gregorian. */
function daysInMonth(y: number, mo: number): number {
  if (mo !== 2) return mo === 4 || mo === 6 || mo === 9 || mo === 11 ? 30 : 31;
  return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0 ? 29 : 28;
}

/**
 * Epoch milliseconds of a calendar date and time, or undefined when it is not one: every field is
 * checked, never rolled over (`2026-02-30` is not March 2, `10:60` is not 11:00), and years 0-99
 * stay what they say (Date.UTC would make oslo's `0050` into 1950). Integer arithmetic (days from
 * the civil date, proleptic Gregorian as Date counts them) rather than a Date set field by field,
 * because every message has three or four times to read (bench/README.md, "Why the code is as it
 * is"); test/unit/parse-fast.test.ts holds it to the Date on every day of 0-9999.
 */
function calendarMs(y: number, mo: number, d: number, h: number, mi: number, s: number): number | undefined {
  if (mo < 1 || mo > 12 || d < 1 || d > daysInMonth(y, mo) || h > 23 || mi > 59 || s > 59) return undefined;
  // March-based years put the leap day last: 400-year eras of 146097 days, 719468 days from
  // 0000-03-01 to 1970-01-01.
  const yy = mo <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const doy = Math.floor((153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  const days = era * 146097 + doe - 719468;
  return ((days * 24 + h) * 60 + mi) * 60_000 + s * 1000;
}

/** oslo's `timestamp`: UTC, space separator, no zone, microseconds only when non-zero. */
const OSLO_TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?$/;

/** Microseconds since the epoch: exact in a double until the year 2255. */
export function osloTimestampMicros(value: string): number | undefined {
  const m = OSLO_TIMESTAMP.exec(value);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac] = m;
  const ms = calendarMs(Number(y), Number(mo), Number(d), Number(h), Number(mi), Number(s));
  if (ms === undefined) return undefined;
  return ms * 1000 + Number((frac ?? '').padEnd(6, '0'));
}

// Consecutive messages mostly fall in the same second: its epoch value is kept, and then only the
// fraction is read. The values are those of osloTimestampMicros, which parses the second. The
// last whole value is kept too: the schema's refinement reads it, then the parse reads it again.
let lastOsloSecond = '';
let lastOsloSecondMicros: number | undefined;
let lastOslo = '';
let lastOsloMicros: number | undefined;

function osloTimestampMicrosOnce(value: string): number | undefined {
  if (value === lastOslo) return lastOsloMicros;
  lastOslo = value;
  lastOsloMicros = osloTimestampMicrosOfSecond(value);
  return lastOsloMicros;
}

function osloTimestampMicrosOfSecond(value: string): number | undefined {
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
// `created_at` equals it on a create. Two entries keep both (a third, `deleted_at`, is only on a
// delete, and is read again when it pushed one out).
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

export const OsloTimestamp = z.string().refine((v) => osloTimestampMicrosOnce(v) !== undefined, {
  message: 'expected an oslo timestamp like "2026-11-26 20:27:41.984542" (UTC, no zone, a real calendar date)',
});

/** Glance payload times: ISO 8601 with `Z` and whole seconds ("2026-11-26T20:27:41Z"). */
const ISO_SECONDS = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-]00:?00)?$/;

export function isoSeconds(value: string): number | undefined {
  // Glance's own form, read digit by digit: a reconcile pass reads two a listed image, and the
  // pattern was a tenth of the CPU of a first pass over a cloud (bench/README.md).
  if (value.length === 20 && value.charCodeAt(19) === 90 /* Z */) return glanceSeconds(value);
  const m = ISO_SECONDS.exec(value);
  if (!m) return undefined;
  // Every zone the pattern admits is UTC; a zone-less value is UTC in Glance (it serialises naive
  // UTC datetimes). The fraction is dropped: Glance keeps whole seconds.
  const [, y, mo, d, h, mi, s] = m;
  const ms = calendarMs(Number(y), Number(mo), Number(d), Number(h), Number(mi), Number(s));
  return ms === undefined ? undefined : ms / 1000;
}

/** "YYYY-MM-DDTHH:MM:SSZ" (the caller checked the length and the Z), as `isoSeconds` reads it. */
function glanceSeconds(value: string): number | undefined {
  const c = (at: number) => value.charCodeAt(at);
  if (c(4) !== 45 || c(7) !== 45 || c(10) !== 84 || c(13) !== 58 || c(16) !== 58) return undefined; // - - T : :
  const y = digits(value, 0, 4);
  const mo = digits(value, 5, 2);
  const d = digits(value, 8, 2);
  const h = digits(value, 11, 2);
  const mi = digits(value, 14, 2);
  const s = digits(value, 17, 2);
  if (y < 0 || mo < 0 || d < 0 || h < 0 || mi < 0 || s < 0) return undefined;
  const ms = calendarMs(y, mo, d, h, mi, s);
  return ms === undefined ? undefined : ms / 1000;
}

/** The number `n` ASCII digits from `at` spell, or -1 when another character is among them. */
function digits(value: string, at: number, n: number): number {
  let v = 0;
  for (let i = at; i < at + n; i++) {
    const d = value.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

export const IsoTime = z
  .string()
  .refine((v) => isoSecondsOnce(v) !== undefined, { message: 'expected an ISO time like "2026-11-26T20:27:41Z" (a real calendar date)' });

// ---------------------------------------------------------------------------------------------
// Identifiers at the door. Everything the ledger stores is bounded and printable here, before any
// store sees it: a NUL byte, a lone surrogate or a 300 KB id must never reach SQL, Lua or a header.

/**
 * Glance's own API schema for an image id (glance/api/v2/images.py): a dashed UUID in either case.
 * Glance makes lowercase uuid4s, but a user may choose the id at create, upper case included; an
 * id Glance accepts must be counted, or it would be a way round the quota.
 */
export const IMAGE_ID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/**
 * A project id: Keystone makes 32 hex digits (uuid4().hex), its column holds 64 characters, and
 * LDAP-backed or migrated clouds may use other letters; nothing else (no space, no control
 * character, nothing to escape) is a project Keystone could have made.
 */
export const PROJECT_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** oslo's message_id is str(uuid4()); any printable ASCII word up to 255 characters is accepted. */
export const MESSAGE_ID = /^[\x21-\x7e]{1,255}$/;

/** `image.create`, `metadef_namespace.create`, ...: printable ASCII, bounded. */
export const EVENT_TYPE = /^[\x21-\x7e]{1,255}$/;

/** Glance's statuses are lowercase words (queued, saving, active, pending_delete, ...). */
export const IMAGE_STATUS = /^[a-z_]{1,32}$/;

/**
 * Largest image size believed: 1 PiB (2^50 bytes), a thousand times Glance's default
 * `image_size_cap` of 1 TiB. It keeps one image from overflowing a store's 64-bit total alone
 * (8192 maximal images still fit a bigint) and keeps every size exact in a double.
 */
export const MAX_IMAGE_SIZE = 2 ** 50;

const messageIdOf = z.string().regex(MESSAGE_ID, { message: "expected oslo's message id, 1 to 255 printable ASCII characters (a UUID)" });
const eventTypeOf = z.string().regex(EVENT_TYPE, { message: 'expected an event type like "image.create", 1 to 255 printable ASCII characters' });

export const OsloMessage = z.object({
  message_id: messageIdOf,
  publisher_id: z.string(),
  event_type: eventTypeOf,
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
  id: z.string().regex(IMAGE_ID, { message: 'expected an image id as Glance makes it, a UUID like "94c33273-4702-45ad-a25b-17a3ac735dee"' }),
  owner: z.string().regex(PROJECT_ID, { message: 'expected a project id: 1 to 64 of A-Z, a-z, 0-9, "_" and "-" (Keystone makes 32 hex digits)' }).nullable(),
  status: z.string().regex(IMAGE_STATUS, { message: 'expected a Glance image status like "queued": 1 to 32 of a-z and "_"' }),
  size: z
    .number()
    .int()
    .nonnegative()
    .max(MAX_IMAGE_SIZE, { message: `expected a size in bytes of at most 1 PiB (${MAX_IMAGE_SIZE})` })
    .nullable()
    .optional(),
  created_at: IsoTime,
  updated_at: IsoTime.nullable().optional(),
  deleted_at: IsoTime.nullable().optional(),
  deleted: z.boolean().optional(),
  protected: z.boolean().optional(),
  properties: z.record(z.string(), z.unknown()).nullable().optional(),
  // image.prepare / image.upload carry it at top level as a list; the stored property is a
  // comma-separated string inside `properties`.
  os_glance_importing_to_stores: z
    .union([z.array(z.string()), z.string()])
    .nullable()
    .optional(),
});
export type ImagePayload = z.infer<typeof ImagePayload>;

// ---------------------------------------------------------------------------------------------
// Plain guards, derived from the schemas above (guard.ts): nearly every body on the bus is
// well-formed, and these settle it without zod; a body a guard turns down goes through the schemas
// (parse.ts), so every rejection is worded by zod alone. Each time is read once: the schemas'
// refinements read it through the memo above, and the value is taken from the same memo.

const isOsloMessage = guardOf(OsloMessage);
const isImagePayload = guardOf(ImagePayload);

/** Accepts exactly what OsloEnvelope accepts. */
export const isOsloEnvelope = guardOf(OsloEnvelope) as (value: unknown) => value is OsloEnvelope;

/** A message OsloMessage accepts, with its `timestamp` in epoch microseconds. */
export interface CheckedOsloMessage {
  message: OsloMessage;
  timestampMicros: number;
}

/** Accepts exactly what OsloMessage accepts (undefined otherwise), reading the timestamp once. */
export function checkOsloMessage(value: unknown): CheckedOsloMessage | undefined {
  if (!isOsloMessage(value)) return undefined;
  const message = value as OsloMessage;
  return { message, timestampMicros: osloTimestampMicrosOnce(message.timestamp)! };
}

/** A payload ImagePayload accepts, with its times in epoch seconds. */
export interface CheckedImagePayload {
  payload: ImagePayload;
  createdAt: number;
  /** undefined when `updated_at` is null or absent. */
  updatedAt: number | undefined;
  /** undefined when `deleted_at` is null or absent. */
  deletedAt: number | undefined;
}

/** Accepts exactly what ImagePayload accepts (undefined otherwise), reading each time once. */
export function checkImagePayload(value: unknown): CheckedImagePayload | undefined {
  if (!isImagePayload(value)) return undefined;
  const payload = value as ImagePayload;
  const { created_at, updated_at, deleted_at } = payload;
  return {
    payload,
    createdAt: isoSecondsOnce(created_at)!,
    updatedAt: updated_at == null ? undefined : isoSecondsOnce(updated_at)!,
    deletedAt: deleted_at == null ? undefined : isoSecondsOnce(deleted_at)!,
  };
}
