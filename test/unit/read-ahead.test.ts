import { describe, expect, it } from 'vitest';
import { readAhead } from '../../src/doors/reconcile.js';

/** A source of `n` pages that logs when each is asked for and when each is handed out. */
function pages(n: number, log: string[], failAt?: number): AsyncGenerator<number, void, undefined> {
  return (async function* () {
    try {
      for (let k = 1; k <= n; k++) {
        log.push(`ask ${k}`);
        await new Promise((resolve) => setTimeout(resolve, 1));
        if (k === failAt) throw new Error(`page ${k} failed`);
        yield k;
      }
    } finally {
      log.push('closed');
    }
  })();
}

describe('readAhead (the reconcile asks for the next Glance page while it writes this one)', () => {
  it('asks for the next page before the work on this one is done', async () => {
    const log: string[] = [];
    for await (const page of readAhead(pages(3, log), () => true)) {
      log.push(`work ${page} starts`);
      await new Promise((resolve) => setTimeout(resolve, 5));
      log.push(`work ${page} ends`);
    }
    // Each next page is asked for as soon as the page before is handed out; the source ends (closed)
    // while the last page is still worked on.
    expect(log).toEqual(['ask 1', 'ask 2', 'work 1 starts', 'work 1 ends', 'ask 3', 'work 2 starts', 'work 2 ends', 'closed', 'work 3 starts', 'work 3 ends']);
  });

  it("sends the next page's request while a consumer that never waits on I/O works on this one", async () => {
    // As node:http does: the request goes out on a tick (process.nextTick), which waits for the
    // promise jobs before it; the ledger's writes are synchronous, so the reconcile's work on a page
    // is one long chain of promise jobs.
    const sent: number[] = [];
    const source = (async function* () {
      for (let k = 1; k <= 3; k++) {
        process.nextTick(() => sent.push(k));
        await new Promise((resolve) => setTimeout(resolve, 1));
        yield k;
      }
    })();
    const sentBeforeDone: number[][] = [];
    for await (const page of readAhead(source, () => true)) {
      for (let step = 0; step < 100; step++) await Promise.resolve(page);
      sentBeforeDone.push([...sent]);
    }
    expect(sentBeforeDone).toEqual([
      [1, 2],
      [1, 2, 3],
      [1, 2, 3],
    ]);
  });

  it('once told no more, asks for nothing more, and hands out the page already asked for', async () => {
    const log: string[] = [];
    let more = true;
    const seen: number[] = [];
    for await (const page of readAhead(pages(10, log), () => more)) {
      seen.push(page);
      if (page === 2) more = false;
    }
    // Page 3 was asked for while page 2 was worked on; it is handed out, and page 4 never asked.
    expect(seen).toEqual([1, 2, 3]);
    expect(log.filter((l) => l.startsWith('ask'))).toEqual(['ask 1', 'ask 2', 'ask 3']);
    expect(log.at(-1)).toBe('closed');
  });

  it('a page asked for ahead that fails is no unhandled rejection: its failure comes in its turn', async () => {
    const log: string[] = [];
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const seen: number[] = [];
      const run = (async () => {
        for await (const page of readAhead(pages(5, log, 2), () => true)) {
          seen.push(page);
          // Long enough for the failure of page 2 to be settled, and noticed were it unhandled.
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      })();
      await expect(run).rejects.toThrow('page 2 failed');
      expect(seen).toEqual([1]);
      await new Promise((resolve) => setTimeout(resolve, 10));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('a consumer that stops early waits for the page in flight and closes the source', async () => {
    const log: string[] = [];
    for await (const page of readAhead(pages(10, log), () => true)) if (page === 1) break;
    expect(log).toEqual(['ask 1', 'ask 2', 'closed']);
  });
});
