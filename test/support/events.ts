import fc from 'fast-check';
import type { ImageEvent } from '../../src/notification/parse.js';

let seq = 0;

/** An image event with sensible defaults; times in seconds from an arbitrary epoch. */
export function ev(partial: Partial<ImageEvent> & { imageId: string }): ImageEvent {
  seq++;
  const updatedAt = partial.updatedAt ?? partial.createdAt ?? 1_000;
  return {
    messageId: `m-${seq}`,
    eventType: 'image.update',
    projectId: 'p1',
    status: 'queued',
    size: null,
    createdAt: 1_000,
    updatedAt,
    timestamp: updatedAt * 1_000_000 + seq,
    importing: '',
    protected: false,
    deleted: false,
    ...partial,
  };
}

export const MiB = 1024 * 1024;

/** What a generated history may hold; see `imageHistory`. */
export interface HistoryShape {
  /** Image ids img-0 .. img-(images - 1). */
  images: number;
  projects: readonly string[];
  statuses: readonly string[];
  maxSizeBytes: number;
  /** `updated_at` takes versions 0 .. versions - 1 seconds after `updatedFrom`. */
  versions: number;
  /** Microseconds of oslo's timestamp, 0 .. maxMicros, so equal `updated_at`s tie-break. */
  maxMicros: number;
  importing: readonly string[];
  /** About one event in this many is an image.delete (a tombstone). */
  deleteOneIn: number;
  minLength: number;
  maxLength: number;
  /** Each image's `created_at`: createdFrom + image * createdEvery (seconds). */
  createdFrom: number;
  createdEvery: number;
  /** The first `updated_at` (seconds). */
  updatedFrom: number;
}

/**
 * A valid random history for the property tests: unique message ids, each image with one
 * created_at, owner changes, tombstones and many versions of each image, in any statuses.
 */
export function imageHistory(shape: HistoryShape): fc.Arbitrary<ImageEvent[]> {
  return fc
    .array(
      fc.record({
        image: fc.integer({ min: 0, max: shape.images - 1 }),
        project: fc.constantFrom(...shape.projects),
        status: fc.constantFrom(...shape.statuses),
        size: fc.option(fc.integer({ min: 0, max: shape.maxSizeBytes }), { nil: null }),
        updatedAt: fc.integer({ min: 0, max: shape.versions - 1 }),
        micros: fc.integer({ min: 0, max: shape.maxMicros }),
        importing: fc.constantFrom(...shape.importing),
        deleted: fc.integer({ min: 0, max: shape.deleteOneIn - 1 }).map((n) => n === 0),
      }),
      { minLength: shape.minLength, maxLength: shape.maxLength },
    )
    .map((items) =>
      items.map(
        (x, i): ImageEvent => ({
          messageId: `msg-${i}`,
          eventType: x.deleted ? 'image.delete' : 'image.update',
          projectId: x.project,
          imageId: `img-${x.image}`,
          status: x.deleted ? 'deleted' : x.status,
          size: x.size,
          createdAt: shape.createdFrom + x.image * shape.createdEvery,
          updatedAt: shape.updatedFrom + x.updatedAt,
          timestamp: (shape.updatedFrom + x.updatedAt) * 1_000_000 + x.micros,
          importing: x.importing,
          protected: false,
          deleted: x.deleted,
        }),
      ),
    );
}
