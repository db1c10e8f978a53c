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
