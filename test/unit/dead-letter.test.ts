import { describe, expect, it } from 'vitest';
import { ExceededAnnouncements } from '../../src/transport/notifier.js';
import { FailedDeadLetters } from '../../src/transport/amqp.js';
import { settlesWithin } from '../../src/retry.js';
import { MAX_COPIED_HEADERS_BYTES, MAX_REASON_BYTES, capUtf8, deadLetterProperties, type DeadLetter } from '../../src/transport/amqp.js';

function delivery(content: string, headers: Record<string, unknown> = {}): DeadLetter['msg'] {
  return {
    content: Buffer.from(content),
    fields: { deliveryTag: 1, redelivered: false, exchange: 'glance', routingKey: 'notifications.info', consumerTag: 'c' },
    properties: { headers, contentType: 'application/json' },
  } as unknown as DeadLetter['msg'];
}

describe('a dead letter stays small whatever the original carried', () => {
  it('caps the reason at 1 KiB of UTF-8, on a character boundary, marked as cut', () => {
    const reason = 'é'.repeat(2_000);
    const capped = capUtf8(reason, MAX_REASON_BYTES);
    expect(Buffer.byteLength(capped)).toBeLessThanOrEqual(MAX_REASON_BYTES);
    expect(capped.endsWith('…')).toBe(true);
    expect(capped).not.toContain('\ufffd');
    expect(capUtf8('short', MAX_REASON_BYTES)).toBe('short');
    const props = deadLetterProperties({ msg: delivery('x'), reason: 'r'.repeat(300_000) });
    expect(Buffer.byteLength(String(props.headers!['x-gqe-reason']))).toBeLessThanOrEqual(MAX_REASON_BYTES);
  });

  it('copies small headers, and drops large ones saying how large they were', () => {
    const small = deadLetterProperties({ msg: delivery('x', { 'x-trace': 'abc' }), reason: 'bad' });
    expect(small.headers).toEqual({ 'x-trace': 'abc', 'x-gqe-reason': 'bad', 'x-gqe-routing-key': 'notifications.info', 'x-gqe-exchange': 'glance' });
    const big = deadLetterProperties({ msg: delivery('x', { 'x-padding': 'p'.repeat(65_400) }), reason: 'bad' });
    expect(big.headers!['x-padding']).toBeUndefined();
    expect(big.headers!['x-gqe-headers-dropped-bytes']).toBeGreaterThan(MAX_COPIED_HEADERS_BYTES);
    // Many small headers add up: the bound is on their sum.
    const many = Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`h${i}`, 'v'.repeat(20)]));
    expect(deadLetterProperties({ msg: delivery('x', many), reason: 'bad' }).headers!.h0).toBeUndefined();
    // A header JSON cannot write is not copied either.
    expect(deadLetterProperties({ msg: delivery('x', { n: 1n }), reason: 'bad' }).headers!['x-gqe-headers-dropped-bytes']).toBe(-1);
    // Told not to copy (its dead-lettering threw once), only the reason and the source go.
    expect(Object.keys(deadLetterProperties({ msg: delivery('x', { 'x-trace': 'abc' }), reason: 'bad' }, false).headers!).sort()).toEqual([
      'x-gqe-exchange',
      'x-gqe-headers-dropped-bytes',
      'x-gqe-reason',
      'x-gqe-routing-key',
    ]);
  });

  it('remembers, boundedly, the bodies whose dead-lettering threw', () => {
    const failed = new FailedDeadLetters(2);
    const [a, b, c] = ['a', 'b', 'c'].map((x) => ({ msg: delivery(x), reason: 'r' }));
    expect(failed.copyHeaders(a!)).toBe(true);
    failed.remember(a!.msg.content);
    expect(failed.copyHeaders(a!)).toBe(false);
    failed.remember(b!.msg.content);
    failed.remember(c!.msg.content);
    expect([failed.copyHeaders(a!), failed.copyHeaders(b!), failed.copyHeaders(c!)]).toEqual([true, false, false]);
  });
});

describe('bounded waits and bounded memory in consume', () => {
  it('settlesWithin says whether a promise settled in time, rejections included', async () => {
    expect(await settlesWithin(Promise.resolve(), 10)).toBe(true);
    expect(await settlesWithin(Promise.reject(new Error('x')), 10)).toBe(true);
    expect(await settlesWithin(undefined, 0)).toBe(true);
    const started = Date.now();
    expect(await settlesWithin(new Promise(() => {}), 50)).toBe(false);
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it('announces limit.exceeded on a change only, and keeps the most recent projects within its bound', () => {
    const last = new ExceededAnnouncements(3);
    expect(last.changed('p1', 'image_count_total')).toBe(true);
    expect(last.changed('p1', 'image_count_total')).toBe(false);
    expect(last.changed('p1', '')).toBe(true);
    expect(last.changed('p1', '')).toBe(false);
    // 20k forged projects over their limits: the map stays at its bound.
    for (let i = 0; i < 20_000; i++) last.changed(`forged-${i}`, 'image_count_total');
    expect(last.size).toBe(3);
    expect(last.changed('forged-19999', 'image_count_total')).toBe(false);
    // One pushed out is announced again: the cost of the bound.
    expect(last.changed('forged-0', 'image_count_total')).toBe(true);
  });
});

describe('the enforcement worker at shutdown', () => {
  it('abandons its backlog and waits for the project in hand only as long as it is told', async () => {
    const { EnforcementWorker } = await import('../../src/pipeline/enforcement-worker.js');
    const { Metrics } = await import('../../src/metrics.js');
    const { createLogger } = await import('../../src/log.js');
    const started: string[] = [];
    // Glance hangs: no enforcement ever ends.
    const pipeline = {
      enforce: (projectId: string) => {
        started.push(projectId);
        return new Promise(() => {});
      },
    } as never;
    const metrics = new Metrics();
    const worker = new EnforcementWorker(pipeline, createLogger('silent'), metrics, undefined, { projectsAtOnce: 2 });
    worker.add(['p1', 'p2', 'p3']);
    await new Promise((r) => setTimeout(r, 10));
    const t = Date.now();
    await worker.stop(200);
    expect(Date.now() - t).toBeLessThan(1_000);
    // Two in hand (ENFORCE_PROJECTS), the third abandoned with the backlog.
    expect(started).toEqual(['p1', 'p2']);
    expect((await metrics.pendingProjects.get()).values[0]?.value).toBe(0);
    // Nothing new is taken after stop.
    worker.add(['p4']);
    await new Promise((r) => setTimeout(r, 10));
    expect(started).toEqual(['p1', 'p2']);
  });
});
