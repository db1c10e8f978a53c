import { z } from 'zod';

/**
 * Wire formats of Glance notifications as oslo.messaging publishes them.
 * Facts from Glance 25.1 captures (test/fixtures): the messagingv2 driver wraps the message in an
 * envelope whose `oslo.message` is a JSON *string*; the older `messaging` driver sends the inner
 * message as the body itself. Glance notifies with an empty context, so no `_context_*` keys exist
 * and the project comes from the payload alone.
 */

export const OsloEnvelope = z.object({
  'oslo.version': z.string(),
  'oslo.message': z.string(),
});

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
