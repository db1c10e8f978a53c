import { z } from 'zod';
import type { ImageEvent } from '../notification/parse.js';
import { isoSeconds } from '../notification/schema.js';
import type { ImageRecord } from './record.js';

export const ImageStatus = z.enum(['queued', 'saving', 'uploading', 'importing', 'active', 'deactivated', 'killed', 'deleted', 'pending_delete']);
export type ImageStatus = z.infer<typeof ImageStatus>;

export const ImageVisibility = z.enum(['public', 'private', 'shared', 'community']);
export type ImageVisibility = z.infer<typeof ImageVisibility>;

/**
 * An image as Glance's v2 API shows it (`GET /v2/images`, one entry of a listing), reduced to what
 * quota enforcement reads: the one type for a Glance image, from the client's parsing to the
 * ledger's repair and the last check before a DELETE.
 */
export const GlanceImage = z.object({
  id: z.string(),
  name: z.string().nullish(),
  owner: z.string().nullable(),
  status: ImageStatus,
  /** Bytes; null until data is uploaded. */
  size: z.number().int().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
  protected: z.boolean(),
  visibility: ImageVisibility,
  os_hidden: z.boolean().optional(),
  /**
   * Comma-separated stores an import is still copying to: a top-level string property of the v2
   * image body, absent on images that never went through an import. While non-empty, the staged
   * data counts toward image_stage_total.
   */
  os_glance_importing_to_stores: z.string().optional(),
});
export type GlanceImage = z.infer<typeof GlanceImage>;

/** A listed image that counts against a project: Glance's quota ignores an image with no owner. */
export type OwnedImage = GlanceImage & { owner: string };

/**
 * Glance's API state as a ledger record, in one step. The API gives whole seconds only, so the
 * record takes the lowest version within its `updated_at` second: a notification from that same
 * second (which has microseconds and may be later than the listing) wins the tie.
 */
export function recordFromGlance(image: OwnedImage): ImageRecord {
  const createdAt = isoSeconds(image.created_at) ?? 0;
  const updatedAt = isoSeconds(image.updated_at) ?? createdAt;
  return {
    messageId: `glance-api:${image.id}`,
    projectId: image.owner,
    imageId: image.id,
    status: image.status,
    size: image.size,
    createdAt,
    updatedAt,
    timestamp: updatedAt * 1_000_000,
    importing: image.os_glance_importing_to_stores ?? '',
    protected: image.protected,
    deleted: image.status === 'deleted',
  };
}

/** The same state as the event that writes it over the ledger (a repair). */
export function eventFromGlance(image: OwnedImage): ImageEvent {
  return { ...recordFromGlance(image), eventType: 'glance.api' };
}

/**
 * Glance confirmed the image is gone (we deleted it, it answered 404, or its owner's listing no
 * longer shows it): tombstone it now. Dated now, not after the record: the record's own date may
 * be a forgery from the future, and this event overwrites it (ApplyOptions.overwrite).
 */
export function tombstoneOf(record: ImageRecord, nowMs: number): ImageEvent {
  return {
    ...record,
    messageId: `glance-api:${record.imageId}:gone`,
    eventType: 'glance.api',
    status: 'deleted',
    updatedAt: Math.floor(nowMs / 1000),
    timestamp: nowMs * 1000,
    deleted: true,
  };
}
