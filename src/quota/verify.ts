import type { GlanceImage } from '../ledger/glance-image.js';

/** What Glance says about a candidate right before the act: the only facts a deletion may rest on. */
export type ImageFacts = Pick<GlanceImage, 'id' | 'owner' | 'status' | 'protected'>;

/** PROTECTED_QUEUED_IMAGES: clear the flag and delete, or leave the image and report it. */
export type ProtectedPolicy = 'unprotect' | 'report';

export type Verdict =
  | { removable: true; unprotectFirst: boolean }
  /** `protected`: past the limit, but PROTECTED_QUEUED_IMAGES=report keeps it; `skipped`: not removable. */
  | { removable: false; kind: 'skipped' | 'protected'; reason: string };

/**
 * A notification alone never deletes anything: it may be forged, stale or replayed. The image is
 * removable only if Glance itself, read right before the act, says it is this project's and still
 * queued. A protected queued image is removable after its flag is cleared, unless the policy is
 * to report it: its owner set the flag at create, and Glance's own quota would have refused the
 * create outright.
 */
export function verifyCandidate(image: ImageFacts | null, projectId: string, policy: ProtectedPolicy): Verdict {
  const skipped = (reason: string): Verdict => ({ removable: false, kind: 'skipped', reason });
  if (!image) return skipped('Glance does not know this image (already deleted?)');
  if (image.owner !== projectId) return skipped(`Glance says the owner is ${image.owner ?? 'nobody'}, not ${projectId}`);
  if (image.status !== 'queued') return skipped(`Glance says the status is ${image.status}, no longer queued`);
  if (image.protected && policy === 'report') {
    return {
      removable: false,
      kind: 'protected',
      reason: 'the image is protected and PROTECTED_QUEUED_IMAGES=report: left in place, counted in its own place',
    };
  }
  return { removable: true, unprotectFirst: image.protected };
}
