import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ReconcileSchedule, type ReconcileSummary } from '../../src/doors/reconcile.js';

/*
 * consume's reconcile schedule: once at start, then every RECONCILE_INTERVAL; a failed run comes
 * back after a backoff, not at the next interval; a broker reconnect asks for one as soon as the
 * run in hand is over; a stopped schedule starts nothing more.
 */

const summary = (n: number) =>
  ({
    passId: 'pass',
    projects: [],
    decided: 0,
    deferred: 0,
    listed: n,
    unreadable: 0,
    corrected: {},
    failures: [],
    complete: true,
    phase: 'done',
    durationMs: 1,
  }) as ReconcileSummary;

describe("consume's reconcile schedule", () => {
  beforeEach(() => void vi.useFakeTimers());
  afterEach(() => void vi.useRealTimers());

  it('runs at start, then every interval; a failure is retried after a backoff shorter than the interval', async () => {
    const outcomes: Array<'ok' | 'fail'> = ['ok', 'fail', 'ok'];
    let runs = 0;
    const seen: string[] = [];
    const schedule = new ReconcileSchedule(
      async () => {
        const outcome = outcomes[runs++] ?? 'ok';
        if (outcome === 'fail') throw new Error('Glance at http://glance:9292 did not answer');
        return summary(runs);
      },
      { intervalMs: 900_000, onSummary: (s) => void seen.push(`ok:${s.listed}`), onFailure: (_err, retryInMs) => void seen.push(`fail:${retryInMs < 10_000}`) },
    );
    schedule.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(seen).toEqual(['ok:1']);
    await vi.advanceTimersByTimeAsync(899_000);
    expect(runs).toBe(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(seen).toEqual(['ok:1', 'fail:true']);
    // The first retry waits below 10 s (5 s doubling, full jitter), not another 15 minutes.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(seen).toEqual(['ok:1', 'fail:true', 'ok:3']);
    await schedule.stop();
    await vi.advanceTimersByTimeAsync(3_600_000);
    expect(runs).toBe(3);
  });

  it('soon() runs one right after the run in hand, and resets the interval', async () => {
    let runs = 0;
    let release!: () => void;
    const schedule = new ReconcileSchedule(
      async () => {
        runs++;
        if (runs === 1) await new Promise<void>((r) => (release = r));
        return summary(runs);
      },
      { intervalMs: 900_000, onSummary: () => {}, onFailure: () => {} },
    );
    schedule.start();
    schedule.soon();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(runs).toBe(1); // the second waits for the first
    release();
    await vi.advanceTimersByTimeAsync(0);
    expect(runs).toBe(2);
    await vi.advanceTimersByTimeAsync(899_000);
    expect(runs).toBe(2);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(runs).toBe(3);
    await schedule.stop();
  });
});
