import type { GlanceImage } from '../ledger/glance-image.js';

/** What Glance's listing says about a candidate: the only facts a deletion may rest on. */
export type ImageFacts = Pick<GlanceImage, 'id' | 'owner' | 'status' | 'protected'>;

export type Verdict = { removable: true } | { removable: false; reason: string };

/**
 * A notification alone never deletes anything: it may be forged, stale or replayed. The image is
 * removable only if Glance itself confirms it is this project's, still queued, and not protected.
 */
export function verifyCandidate(image: ImageFacts | null, projectId: string): Verdict {
  if (!image) return { removable: false, reason: 'Glance does not know this image (already deleted?)' };
  if (image.owner !== projectId) return { removable: false, reason: `Glance says the owner is ${image.owner ?? 'nobody'}, not ${projectId}` };
  if (image.status !== 'queued') return { removable: false, reason: `Glance says the status is ${image.status}, no longer queued` };
  if (image.protected) return { removable: false, reason: 'the image is protected' };
  return { removable: true };
}
