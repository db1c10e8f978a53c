import { describe, expect, it } from 'vitest';
import { recordFromEvent, type ImageRecord } from '../../src/ledger/record.js';
import { usageOf } from '../../src/ledger/usage.js';
import { decide } from '../../src/quota/decide.js';
import { parseLimits, type ProjectLimits } from '../../src/quota/limits.js';
import { ev } from '../support/events.js';

function rec(imageId: string, createdAt: number, status = 'queued', extra: Partial<ImageRecord> = {}): ImageRecord {
  return { ...recordFromEvent(ev({ imageId, createdAt, status })), ...extra };
}

function run(records: ImageRecord[], limits: ProjectLimits, exempt = false, nowSeconds = 10) {
  return decide(records, usageOf(records), limits, { exempt, nowSeconds });
}

describe('count excess', () => {
  it('removes the newest queued images, as many as the excess', () => {
    const records = [rec('a', 1), rec('b', 2), rec('c', 3), rec('d', 4, 'active'), rec('e', 5)];
    expect(run(records, { image_count_total: 3 })).toEqual({ over: ['image_count_total'], toDelete: ['e', 'c'] });
  });

  it('never picks an image in another state, even when the excess is larger', () => {
    const records = [rec('a', 1, 'active'), rec('b', 2, 'saving'), rec('c', 3, 'deactivated'), rec('q', 4)];
    expect(run(records, { image_count_total: 1 }).toDelete).toEqual(['q']);
  });

  it('orders equal created_at by the larger id first', () => {
    const records = [rec('a', 5), rec('c', 5), rec('b', 5)];
    expect(run(records, { image_count_total: 1 }).toDelete).toEqual(['c', 'b']);
  });

  it('is at the limit, not over it, when usage equals the limit', () => {
    expect(run([rec('a', 1), rec('b', 2)], { image_count_total: 2 })).toEqual({ over: [], toDelete: [] });
  });

  it('treats an absent or negative limit as unlimited, and 0 as a real limit', () => {
    const records = [rec('a', 1), rec('b', 2)];
    expect(run(records, {}).over).toEqual([]);
    expect(run(records, { image_count_total: -1 }).over).toEqual([]);
    expect(run(records, { image_count_total: 0 }).toDelete).toEqual(['b', 'a']);
  });

  it('reports size and uploading limits but deletes nothing for them', () => {
    const records = [rec('a', 1, 'active', { size: 5 * 1024 * 1024 }), rec('b', 2)];
    expect(run(records, { image_size_total: 4 })).toEqual({ over: ['image_size_total'], toDelete: [] });
  });

  it('reports an exempt project but gives it no candidates', () => {
    expect(run([rec('a', 1), rec('b', 2)], { image_count_total: 1 }, true)).toEqual({ over: ['image_count_total'], toDelete: [] });
  });
});

describe('creation rate', () => {
  const rate = (text: string) => parseLimits(`image_create_rate=${text}`);

  it('flags the images past the first N of those created in the last W seconds (strictly less than W before now)', () => {
    // 3 per 10 s, now = 10: a (0) is exactly 10 s old and out; b, c, d, e are in the window, so e,
    // the 4th, is over. f is dated after now (a clock ahead, or a forgery): in the window too.
    const records = [rec('a', 0), rec('b', 1), rec('c', 2), rec('d', 9), rec('e', 10), rec('f', 30)];
    expect(run(records, rate('3/10s'))).toEqual({ over: ['image_create_rate'], toDelete: ['f', 'e'] });
  });

  it('leaves an old burst alone: a year-old burst of 5 is not a rate violation today', () => {
    const year = 365 * 24 * 3600;
    const burst = ['b1', 'b2', 'b3', 'b4', 'b5'].map((id, i) => rec(id, i));
    const today = [rec('t1', year + 100), rec('t2', year + 200)];
    expect(run([...burst, ...today], rate('2/60s'), false, year + 300)).toEqual({ over: [], toDelete: [] });
    // The same burst, decided while it happens, is one.
    expect(run(burst, rate('2/60s'), false, 5)).toEqual({ over: ['image_create_rate'], toDelete: ['b5', 'b4', 'b3'] });
  });

  it("counts a protected queued image in its own place: the project's other images never go instead", () => {
    const records = [rec('a', 1), rec('b', 2), rec('c', 3, 'queued', { protected: true })];
    expect(run(records, { image_count_total: 2 })).toEqual({ over: ['image_count_total'], toDelete: ['c'] });
  });

  it('counts deleted images in the window: create/delete churn is the attack', () => {
    const gone = { deleted: true, status: 'deleted' };
    const records = [rec('a', 0, 'deleted', gone), rec('b', 1, 'deleted', gone), rec('c', 2)];
    expect(run(records, rate('2/60s'))).toEqual({ over: ['image_create_rate'], toDelete: ['c'] });
  });

  it('reports the rate over without candidates when the fast images are no longer queued', () => {
    const records = [rec('a', 0, 'active'), rec('b', 1, 'active')];
    expect(run(records, rate('1/1m'))).toEqual({ over: ['image_create_rate'], toDelete: [] });
  });

  it('joins rate and count candidates into one list, newest first, without repeats', () => {
    const records = [rec('a', 0), rec('b', 1), rec('c', 2), rec('d', 100)];
    const limits = { ...rate('2/60s'), image_count_total: 2 };
    expect(run(records, limits)).toEqual({ over: ['image_count_total', 'image_create_rate'], toDelete: ['d', 'c'] });
  });
});

describe('limits syntax', () => {
  it('parses QUOTA_LIMITS with every resource and rate units', () => {
    expect(parseLimits('image_count_total=100, image_size_total=10240,image_count_uploading=-1,image_stage_total=0,image_create_rate=20/1m')).toEqual({
      image_count_total: 100,
      image_size_total: 10240,
      image_count_uploading: -1,
      image_stage_total: 0,
      image_create_rate: { count: 20, windowSeconds: 60 },
    });
  });

  it.each([
    ['image_count_total', /expected RESOURCE=VALUE/],
    ['image_count_total=ten', /whole number/],
    ['images=3', /unknown resource 'images'.*image_count_total/],
    ['image_create_rate=20', /N\/W/],
    ['image_create_rate=5/0s', /at least 1 second/],
  ])('rejects %s with an error that names the fix', (text, message) => {
    expect(() => parseLimits(text)).toThrow(message);
  });
});

describe('verification against what Glance says', () => {
  const glance = { id: 'x', owner: 'p1', status: 'queued', protected: false } as const;
  it('confirms only a queued image of the project; a protected one is unprotected first, or kept and reported', async () => {
    const { verifyCandidate } = await import('../../src/quota/verify.js');
    expect(verifyCandidate(glance, 'p1', 'unprotect')).toEqual({ removable: true, unprotectFirst: false });
    expect(verifyCandidate(null, 'p1', 'unprotect')).toMatchObject({ removable: false, kind: 'skipped', reason: expect.stringMatching(/does not know/) });
    expect(verifyCandidate({ ...glance, owner: 'p2' }, 'p1', 'unprotect')).toMatchObject({ reason: expect.stringMatching(/owner is p2/) });
    expect(verifyCandidate({ ...glance, owner: null }, 'p1', 'unprotect')).toMatchObject({ reason: expect.stringMatching(/owner is nobody/) });
    expect(verifyCandidate({ ...glance, status: 'saving' }, 'p1', 'unprotect')).toMatchObject({
      kind: 'skipped',
      reason: expect.stringMatching(/status is saving/),
    });
    expect(verifyCandidate({ ...glance, protected: true }, 'p1', 'unprotect')).toEqual({ removable: true, unprotectFirst: true });
    expect(verifyCandidate({ ...glance, protected: true }, 'p1', 'report')).toMatchObject({ removable: false, kind: 'protected' });
    // An active protected image is never a candidate, whatever the policy.
    expect(verifyCandidate({ ...glance, status: 'active', protected: true }, 'p1', 'unprotect')).toMatchObject({ removable: false, kind: 'skipped' });
  });
});
