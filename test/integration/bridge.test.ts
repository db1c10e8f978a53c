import { SendMessageBatchCommand, SQSClient, type SendMessageBatchCommandInput, type SendMessageBatchCommandOutput } from '@aws-sdk/client-sqs';
import { mockClient } from 'aws-sdk-client-mock';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { loadConfig } from '../../src/config.js';
import { handleSqsEvent } from '../../src/doors/lambda/sqs.js';
import { createLogger } from '../../src/log.js';
import { MemoryStore } from '../../src/store/memory.js';
import { regionOfQueueUrl, SQS_MAX_MESSAGE_BYTES, SqsBridge, sqsBody } from '../../src/doors/sqs-bridge.js';
import { ATTACKER_LIMITED, MemoryGlance, chunks, realBodies, servicesOver, sqsEvent } from '../functions/support.js';
import { quotaTestBodies } from '../support/fixtures.js';
import { compareLedgers } from '../support/ledger-oracle.js';
import { freshLedger, freshQueue, holdService, requireService, type TestQueue } from '../support/services.js';
import { pipelineOf } from '../../src/composition-root.js';

/*
 * `glance-quota-enforcer bridge` against the real RabbitMQ, with SQS played by
 * aws-sdk-client-mock: what SQS was sent, what it accepted, and what the broker still holds.
 */

const QUEUE_URL = 'https://sqs.eu-west-1.amazonaws.com/123456789012/glance-quota-enforcer-ci-notifications';
const sqs = mockClient(SQSClient);

type Call = { entries: { Id: string; MessageBody: string }[]; answer: (out: Partial<SendMessageBatchCommandOutput> | Error) => void };

/** Every SendMessageBatch request, held until the test answers it. */
function heldCalls(): Call[] {
  const calls: Call[] = [];
  sqs.on(SendMessageBatchCommand).callsFake(
    (input: SendMessageBatchCommandInput) =>
      new Promise((resolve, reject) => {
        calls.push({
          entries: (input.Entries ?? []).map((e) => ({ Id: e.Id!, MessageBody: e.MessageBody! })),
          answer: (out) => (out instanceof Error ? reject(out) : resolve(out)),
        });
      }),
  );
  return calls;
}

const acceptAll = (call: Call) =>
  call.answer({ Successful: call.entries.map((e) => ({ Id: e.Id, MessageId: `sqs-${e.Id}`, MD5OfMessageBody: '' })), Failed: [] });

async function until(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('the bridge from RabbitMQ to SQS', () => {
  let q: TestQueue;
  let bridge: SqsBridge | undefined;
  let running: Promise<void> | undefined;
  // A RabbitMQ that is down fails every test, with the command that starts it (never a skip).
  let down: Error | undefined;
  beforeAll(async () => {
    down = await requireService('rabbitmq').then(
      () => undefined,
      (err: Error) => err,
    );
  });
  beforeEach(async () => {
    if (down) throw down;
    q = await freshQueue('bridge');
  });
  afterEach(async () => {
    await bridge?.stop(0);
    await running;
    bridge = undefined;
    sqs.reset();
    await q?.delete();
    q = undefined!;
  });
  afterAll(() => sqs.restore());

  async function startBridge(): Promise<SqsBridge> {
    const config = loadConfig({ ...q.env, PREFETCH: '100' });
    bridge = new SqsBridge({ config, sqs: new SQSClient({ region: 'eu-west-1' }), queueUrl: QUEUE_URL, log: createLogger('silent'), retryBaseMs: 5 });
    running = bridge.run();
    await bridge.whenConnected();
    return bridge;
  }

  /** What is ready in the queue now, taken off it. */
  async function drainReady(): Promise<string[]> {
    const ch = await q.connection.createChannel();
    const bodies: string[] = [];
    for (let m = await ch.get(q.queue, { noAck: true }); m; m = await ch.get(q.queue, { noAck: true })) bodies.push(m.content.toString('utf8'));
    await ch.close();
    return bodies;
  }

  it('acknowledges no message before SQS accepted it', async () => {
    const calls = heldCalls();
    const b = await startBridge();
    const bodies = realBodies().slice(0, 25);
    await q.publish(bodies);
    // Requests of at most 10, all in flight, none answered: every message is out, none acked.
    const sent = () => calls.reduce((n, c) => n + c.entries.length, 0);
    await until('all 25 messages in SendMessageBatch requests', () => sent() === 25);
    expect(calls.length).toBeGreaterThanOrEqual(3);
    expect(calls.every((c) => c.entries.length <= 10)).toBe(true);
    expect(calls.flatMap((c) => c.entries.map((e) => e.MessageBody)).sort()).toEqual([...bodies].sort());
    expect(await q.ready()).toBe(0);

    const [accepted, ...held] = calls;
    acceptAll(accepted!);
    await until('the first request acknowledged', () => b.counters.forwarded === accepted!.entries.length);
    // The bridge dies now: what SQS has not accepted comes back, and only that.
    await b.stop(0);
    const back = await drainReady();
    expect(back.sort()).toEqual(held.flatMap((c) => c.entries.map((e) => e.MessageBody)).sort());
    // SQS answering after the connection is gone acknowledges nothing on it.
    for (const c of held) acceptAll(c);
    await sleep(50);
    expect(b.counters.forwarded).toBe(accepted!.entries.length);
  });

  it('sends again only the entries SQS failed; downstream the ledger counts each message once', async () => {
    // What SQS holds: accepted entries, and those of a request whose answer was lost on the way.
    const bodies = realBodies();
    const throttledOnce = new Set(bodies.slice(0, 3));
    const lostOnce = bodies[30]!;
    const queued: string[] = [];
    const requests: string[][] = [];
    const failedSets: string[][] = [];
    let lost: string[] = [];
    sqs.on(SendMessageBatchCommand).callsFake(async (input: SendMessageBatchCommandInput) => {
      const entries = input.Entries ?? [];
      const sent = entries.map((e) => e.MessageBody!);
      requests.push(sent);
      if (lost.length === 0 && sent.includes(lostOnce)) {
        // SQS took them all, and the connection dropped before the answer: the bridge cannot know.
        lost = sent;
        queued.push(...sent);
        throw Object.assign(new Error('socket hang up'), { name: 'TimeoutError' });
      }
      // Throttled on a few entries the first time they come: the rest of the request is in.
      const failed = entries.filter((e) => throttledOnce.delete(e.MessageBody!));
      if (failed.length > 0) failedSets.push(failed.map((e) => e.MessageBody!));
      const ok = entries.filter((e) => !failed.includes(e));
      queued.push(...ok.map((e) => e.MessageBody!));
      return {
        Successful: ok.map((e) => ({ Id: e.Id!, MessageId: `sqs-${requests.length}-${e.Id}`, MD5OfMessageBody: '' })),
        Failed: failed.map((e) => ({ Id: e.Id!, SenderFault: false, Code: 'RequestThrottled', Message: 'Rate exceeded' })),
      };
    });
    const b = await startBridge();
    await q.publish(bodies);
    await until('every message forwarded', () => b.counters.forwarded === bodies.length);
    expect(await q.ready()).toBe(0);

    const sameSet = (a: string[], b: string[]) => a.length === b.length && [...a].sort().join('\n') === [...b].sort().join('\n');
    // The retry of a partial failure carries the failed entries and nothing else; that of a lost
    // answer, the whole request again.
    expect(failedSets.flat().sort()).toEqual(bodies.slice(0, 3).sort());
    for (const failed of failedSets) expect(requests.some((r) => sameSet(r, failed))).toBe(true);
    expect(lost.length).toBeGreaterThan(0);
    expect(requests.filter((r) => sameSet(r, lost))).toHaveLength(2);
    // Each body is in SQS: once, or twice for those of the lost answer; none is missing.
    expect(new Set(queued)).toEqual(new Set(bodies));
    expect(queued.length).toBe(bodies.length + lost.length);
    expect(b.counters.retried).toBe(3 + lost.length);
    await b.stop();
    expect(await q.ready()).toBe(0);

    // Downstream: the sqs function over what SQS holds, against replay of the bodies Glance sent.
    const release = await holdService('redis');
    const ledger = await freshLedger('redis');
    try {
      const store = await ledger.open();
      const services = servicesOver({ store, glance: MemoryGlance.fromBodies(quotaTestBodies()), env: { ENFORCEMENT_MODE: 'dry-run' } });
      const counts = { applied: 0, duplicate: 0 };
      for (const batch of chunks(queued, 10)) {
        const reply = await handleSqsEvent(services, sqsEvent(batch).event);
        expect(reply.batchItemFailures).toEqual([]);
        counts.applied += reply.messages.applied;
        counts.duplicate += reply.messages.duplicate;
      }
      const oracle = pipelineOf({ store: new MemoryStore(), limits: ATTACKER_LIMITED });
      const { outcomes } = await oracle.ingest(bodies);
      expect(counts.applied).toBe(outcomes.filter((o) => o.result === 'applied').length);
      expect(counts.duplicate).toBe(lost.filter((body) => outcomes[bodies.indexOf(body)]!.result === 'applied').length);
      expect(await compareLedgers(services.pipeline, oracle)).toMatchObject({ differences: [] });
      await store.close();
    } finally {
      await ledger.cleanUp();
      release();
    }
    // The wait for Redis: another suite may hold it (or have it stopped) for a while.
  }, 300_000);

  it('dead-letters what SQS cannot carry unchanged or refuses, with the reason, and forwards the rest', async () => {
    sqs.on(SendMessageBatchCommand).callsFake(async (input: SendMessageBatchCommandInput) => {
      const entries = input.Entries ?? [];
      const refused = entries.filter((e) => e.MessageBody!.includes('refuse-me'));
      return {
        Successful: entries.filter((e) => !refused.includes(e)).map((e) => ({ Id: e.Id!, MessageId: 'x', MD5OfMessageBody: '' })),
        Failed: refused.map((e) => ({ Id: e.Id!, SenderFault: true, Code: 'InvalidParameterValue', Message: 'One or more parameters are invalid.' })),
      };
    });
    const b = await startBridge();
    const [good] = realBodies();
    const oversize = JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': 'x'.repeat(SQS_MAX_MESSAGE_BYTES) });
    const refused = JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': 'refuse-me' });
    await q.publish([oversize, good!, refused]);
    const ch = await q.connection.createConfirmChannel();
    ch.publish(JSON.parse(JSON.stringify(q.env)).NOTIFICATION_EXCHANGE, `${q.env.NOTIFICATION_TOPIC}.info`, Buffer.from([0x7b, 0xff, 0xfe, 0x7d]));
    await ch.waitForConfirms();
    await until('four messages handled', () => b.counters.forwarded + b.counters.deadLettered === 4);
    expect(b.counters).toMatchObject({ forwarded: 1, deadLettered: 3 });
    const sent = sqs.commandCalls(SendMessageBatchCommand).flatMap((c) => c.args[0].input.Entries!.map((e) => e.MessageBody));
    expect(sent.sort()).toEqual([good!, refused].sort());

    const dead: { reason: string; bytes: number }[] = [];
    for (let m = await ch.get(`${q.queue}.dead`, { noAck: true }); m; m = await ch.get(`${q.queue}.dead`, { noAck: true })) {
      dead.push({ reason: String(m.properties.headers?.['x-gqe-reason']), bytes: m.content.length });
    }
    await ch.close();
    expect(dead.map((d) => d.reason).sort()).toEqual(
      [
        expect.stringMatching(/^SQS refused the message: InvalidParameterValue/),
        expect.stringMatching(/^body is not UTF-8 text/),
        expect.stringMatching(/^body of 262\d{3} bytes is over SQS's limit of 262144 bytes per message$/),
      ].sort((a, b) => String(a).localeCompare(String(b))),
    );
    expect(dead.find((d) => d.reason.startsWith('body of'))!.bytes).toBe(Buffer.byteLength(oversize));
    expect(await q.ready()).toBe(0);
  });

  it('dead-letters a body SQS cannot carry even when it came with a 65,400-byte header, and goes on forwarding', async () => {
    sqs.on(SendMessageBatchCommand).callsFake(async (input: SendMessageBatchCommandInput) => ({
      Successful: (input.Entries ?? []).map((e) => ({ Id: e.Id!, MessageId: 'x', MD5OfMessageBody: '' })),
      Failed: [],
    }));
    const b = await startBridge();
    const ch = await q.connection.createConfirmChannel();
    // Not UTF-8, so not for SQS; its header is past what amqplib can send on (64 KiB in all).
    ch.publish(q.env.NOTIFICATION_EXCHANGE!, `${q.env.NOTIFICATION_TOPIC}.info`, Buffer.from([0x7b, 0xff, 0x7d]), {
      headers: { 'x-padding': 'p'.repeat(65_400) },
    });
    await ch.waitForConfirms();
    const good = realBodies().slice(0, 5);
    await q.publish(good);
    await until('the five forwarded and the poison dead-lettered', () => b.counters.forwarded === 5 && b.counters.deadLettered === 1);
    const m = await ch.get(`${q.queue}.dead`, { noAck: true });
    if (m === false) throw new Error('the dead-letter queue is empty: the poison was not dead-lettered');
    expect(m.properties.headers).toMatchObject({
      'x-gqe-reason': expect.stringMatching(/^body is not UTF-8 text/),
      'x-gqe-headers-dropped-bytes': expect.any(Number),
    });
    expect(m.properties.headers?.['x-padding']).toBeUndefined();
    await ch.close();
    expect(await q.ready()).toBe(0);
  });
});

describe('what the bridge checks before sending', () => {
  it('reads the region from the queue URL', () => {
    expect(regionOfQueueUrl(QUEUE_URL)).toBe('eu-west-1');
    expect(regionOfQueueUrl('https://sqs.us-gov-west-1.amazonaws.com/1/q')).toBe('us-gov-west-1');
    expect(regionOfQueueUrl('https://sqs.cn-north-1.amazonaws.com.cn/1/q')).toBe('cn-north-1');
    expect(regionOfQueueUrl('http://localhost:4566/000000000000/q')).toBeUndefined();
  });

  it('forwards a body only as SQS will carry it, byte for byte', () => {
    for (const body of realBodies()) expect(sqsBody(Buffer.from(body))).toEqual({ body });
    expect(sqsBody(Buffer.alloc(SQS_MAX_MESSAGE_BYTES, 0x61))).toEqual({ body: 'a'.repeat(SQS_MAX_MESSAGE_BYTES) });
    expect(sqsBody(Buffer.alloc(SQS_MAX_MESSAGE_BYTES + 1, 0x61))).toMatchObject({ reason: expect.stringMatching(/262145 bytes/) });
    expect(sqsBody(Buffer.from('{"a": "\u0001"}'))).toMatchObject({ reason: expect.stringMatching(/U\+0001 at character 7/) });
    expect(sqsBody(Buffer.from(''))).toMatchObject({ reason: expect.stringMatching(/empty/) });
  });

  it('`bridge` without SQS_QUEUE_URL says what to set, and exits 2', async () => {
    const saved = process.env.SQS_QUEUE_URL;
    delete process.env.SQS_QUEUE_URL;
    const err: string[] = [];
    try {
      expect(await main(['bridge'], { stdout: () => {}, stderr: (t) => void err.push(t) })).toBe(2);
    } finally {
      if (saved !== undefined) process.env.SQS_QUEUE_URL = saved;
    }
    expect(err.join('')).toMatch(/^SQS_QUEUE_URL: not set; `bridge` forwards Glance's notifications to this SQS queue, the NotificationsQueueUrl output/);
  });
});
