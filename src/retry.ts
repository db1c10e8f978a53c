/**
 * Retrying and waiting with a deadline, for every loop that does either.
 *
 * The one backoff every retry loop uses (the consumer's reconnections and enforcement retries, the
 * SQS bridge, the scheduled reconcile, OpenStack calls, PostgreSQL serialization retries).
 *
 * Full jitter, capped: the delay is drawn uniformly from [0, min(maxMs, baseMs * 2^attempt)), so a
 * fleet of processes that lost a broker, Keystone or a store at the same moment does not come back
 * in lockstep. No I/O and no clock: `random` is injected by tests.
 *
 * @example
 *   backoffMs(0, 250, 4_000); // below 250 ms
 *   backoffMs(3, 250, 4_000); // below 2 s
 *   backoffMs(9, 250, 4_000); // below 4 s: the cap
 */
export function backoffMs(attempt: number, baseMs = 200, maxMs = 30_000, random: () => number = Math.random): number {
  // The exponent stops at 20 so that a long outage cannot overflow the ceiling to Infinity.
  return Math.floor(random() * Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(0, attempt), 20)));
}

/** Whether `promise` settles within `ms` (it goes on either way). */
export async function settlesWithin(promise: Promise<unknown> | undefined, ms: number): Promise<boolean> {
  if (!promise) return true;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, ms))));
  try {
    return await Promise.race([
      promise.then(
        () => true,
        () => true,
      ),
      late,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
