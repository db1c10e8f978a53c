import type { ImageEvent } from '../notification/parse.js';
import { isoSeconds } from '../notification/schema.js';
import type { ImageRecord } from './record.js';

/** An image as Glance's v2 API shows it: what reconcile and verification read. */
export interface GlanceImageState {
  id: string;
  owner: string | null;
  status: string;
  protected: boolean;
  size: number | null;
  created_at: string;
  updated_at: string;
  os_glance_importing_to_stores?: string | null | undefined;
}

/**
 * Glance's API state as a ledger event. The API gives whole seconds only, so the event takes the
 * lowest version within its `updated_at` second: a notification from that same second (which has
 * microseconds and may be later than the listing) wins the tie.
 */
export function eventFromGlance(image: GlanceImageState & { owner: string }): ImageEvent {
  const createdAt = isoSeconds(image.created_at) ?? 0;
  const updatedAt = isoSeconds(image.updated_at) ?? createdAt;
  return {
    messageId: `glance-api:${image.id}`,
    eventType: 'glance.api',
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
