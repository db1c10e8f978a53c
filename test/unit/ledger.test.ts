import { describe, expect, it } from 'vitest';
import { mergeRecord, type ImageRecord } from '../../src/ledger/record.js';
import { usageOf } from '../../src/ledger/usage.js';
import { ev, MiB } from '../support/events.js';

function ledger(...events: ReturnType<typeof ev>[]): Map<string, ImageRecord> {
  const m = new Map<string, ImageRecord>();
  for (const e of events) m.set(e.imageId, mergeRecord(m.get(e.imageId), e));
  return m;
}

describe('the ledger keeps the newest state of each image', () => {
  it('takes the later updated_at whatever the arrival order', () => {
    const saving = ev({ imageId: 'a', status: 'saving', updatedAt: 10 });
    const active = ev({ imageId: 'a', status: 'active', size: 5, updatedAt: 11 });
    expect(ledger(saving, active).get('a')?.status).toBe('active');
    expect(ledger(active, saving).get('a')?.status).toBe('active');
  });

  it('breaks a tie on updated_at (whole seconds) with the oslo timestamp', () => {
    const saving = ev({ imageId: 'a', status: 'saving', updatedAt: 10, timestamp: 10_000_100 });
    const active = ev({ imageId: 'a', status: 'active', updatedAt: 10, timestamp: 10_000_900 });
    expect(ledger(active, saving).get('a')?.status).toBe('active');
  });

  it('prefers updated_at over the oslo timestamp (a late-published older state loses)', () => {
    const newer = ev({ imageId: 'a', status: 'active', updatedAt: 11, timestamp: 5 });
    const older = ev({ imageId: 'a', status: 'queued', updatedAt: 10, timestamp: 99 });
    expect(ledger(newer, older).get('a')?.status).toBe('active');
  });

  it('never brings a deleted image back, neither from an earlier nor a later update', () => {
    const del = ev({ imageId: 'a', eventType: 'image.delete', status: 'deleted', deleted: true, updatedAt: 20 });
    const later = ev({ imageId: 'a', status: 'active', updatedAt: 30 });
    const earlier = ev({ imageId: 'a', status: 'queued', updatedAt: 5 });
    for (const order of [
      [del, later, earlier],
      [later, del, earlier],
      [earlier, later, del],
    ]) {
      const r = ledger(...order).get('a')!;
      expect(r.deleted).toBe(true);
      expect(usageOf([r]).image_count_total).toBe(0);
    }
  });

  it('moves an image whose owner was changed to the new project', () => {
    const r = ledger(ev({ imageId: 'a', projectId: 'p1', updatedAt: 1 }), ev({ imageId: 'a', projectId: 'p2', updatedAt: 2 })).get('a');
    expect(r?.projectId).toBe('p2');
  });
});

describe("usage follows Glance's definitions", () => {
  const records = (...events: ReturnType<typeof ev>[]) => [...ledger(...events).values()];

  it('counts every live image, and not killed, pending_delete, deleted or tombstoned ones', () => {
    const usage = usageOf(
      records(
        ev({ imageId: 'q', status: 'queued' }),
        ev({ imageId: 'a', status: 'active', size: 1 }),
        ev({ imageId: 'd', status: 'deactivated', size: 1 }),
        ev({ imageId: 'k', status: 'killed' }),
        ev({ imageId: 'pd', status: 'pending_delete', size: MiB }),
        ev({ imageId: 'x', status: 'deleted', deleted: true, size: MiB }),
      ),
    );
    expect(usage.image_count_total).toBe(3);
  });

  it('counts saving, uploading and importing as uploading, plus a copy in progress on an active image', () => {
    const usage = usageOf(
      records(
        ev({ imageId: 's', status: 'saving' }),
        ev({ imageId: 'u', status: 'uploading' }),
        ev({ imageId: 'i', status: 'importing', importing: 'file' }),
        ev({ imageId: 'c', status: 'active', importing: 'store2' }),
        ev({ imageId: 'a', status: 'active' }),
        ev({ imageId: 'k', status: 'killed', importing: 'file' }),
      ),
    );
    expect(usage.image_count_uploading).toBe(4);
  });

  it('sums sizes of live images, floored to MiB once over the sum', () => {
    const usage = usageOf(
      records(
        ev({ imageId: 'a', status: 'active', size: MiB / 2 }),
        ev({ imageId: 'b', status: 'active', size: MiB / 2 + 1 }),
        ev({ imageId: 'c', status: 'active', size: MiB - 1 }),
        ev({ imageId: 'q', status: 'queued', size: null }),
        ev({ imageId: 'z', status: 'active', size: 0 }),
        ev({ imageId: 'k', status: 'killed', size: 10 * MiB }),
      ),
    );
    // (0.5 + 0.5 + 1 byte + 1 - 1 byte) MiB = 2 MiB exactly; per-image flooring would give 0.
    expect(usage.image_size_total).toBe(2);
  });

  it('counts staged data: uploading and importing images, and active ones being copied; not saving', () => {
    const usage = usageOf(
      records(
        ev({ imageId: 'u', status: 'uploading', size: 3 * MiB }),
        ev({ imageId: 'i', status: 'importing', size: 2 * MiB }),
        ev({ imageId: 'c', status: 'active', size: 5 * MiB, importing: 'store2' }),
        ev({ imageId: 's', status: 'saving', size: 7 * MiB }),
        ev({ imageId: 'a', status: 'active', size: 11 * MiB }),
      ),
    );
    expect(usage.image_stage_total).toBe(10);
    expect(usage.image_size_total).toBe(28);
  });
});
