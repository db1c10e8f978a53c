import { SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handler as amazonmqEntry } from '../../functions/amazonmq.js';
import { handler as reconcileEntry } from '../../functions/reconcile.js';
import { handler as sqsEntry } from '../../functions/sqs.js';
import { amazonMqHandler } from '../../src/doors/lambda/amazonmq.js';
import { onColdStart, openFunctionServices, requireSharedStore, type FunctionServices } from '../../src/doors/lambda/instance.js';
import { sqsHandler } from '../../src/doors/lambda/sqs.js';
import { createLogger } from '../../src/log.js';
import { captures } from '../support/fixtures.js';
import { freshLedger, holdService, requireService, type TestLedger } from '../support/services.js';
import { rmqEvent, sqsEvent } from './support.js';

/*
 * A function instance builds its services once, at its first invocation (the cold start), from
 * the environment serverless.yml gives it, and reuses them; a shared ledger is required.
 */

// An identity that is never asked: the batches below change no project, so nothing is decided.
const OPENSTACK = {
  OS_AUTH_URL: 'http://127.0.0.1:9/v3',
  OS_USERNAME: 'gqe',
  OS_PASSWORD: 'pw-never-logged',
  OS_USER_DOMAIN_NAME: 'Default',
  OS_PROJECT_NAME: 'admin',
  OS_PROJECT_DOMAIN_NAME: 'Default',
  OS_SYSTEM_SCOPE: 'all',
  LOG_LEVEL: 'silent',
};

/** Real bodies the ledger ignores (image.send, image.member.*, task.*, a failed upload's ERROR). */
const ignoredBodies = () =>
  captures()
    .filter((c) => !/^image\.(create|update|prepare|upload|activate|delete)$/.test(c.eventType) || c.priority !== 'INFO')
    .map((c) => c.body);

describe('the cold start refuses a ledger that is not shared', () => {
  it.each([
    [
      'sqlite://./data/glance-quota.db',
      /^STORE_URL: a function needs a ledger that all its instances share, postgres:\/\/.* or redis:\/\/.*; got sqlite:\/\/, which would give every Lambda instance a ledger of its own/,
    ],
    ['memory://', /got memory:\/\//],
  ])('%s', async (url, message) => {
    expect(() => requireSharedStore(url)).toThrow(message);
    await expect(openFunctionServices({ ...OPENSTACK, STORE_URL: url })).rejects.toThrow(message);
  });

  it('refuses the default STORE_URL too (SQLite), and names the variable to set', async () => {
    await expect(openFunctionServices({ ...OPENSTACK })).rejects.toMatchObject({ name: 'ConfigError', message: expect.stringMatching(/^STORE_URL: /) });
  });

  it('fails every invocation until the store answers, then builds once', async () => {
    let opens = 0;
    const services = onColdStart(
      async () => {
        if (++opens === 1) throw new Error('STORE_URL: cannot connect to Redis at redis://cache:6379/0 (ECONNREFUSED)');
        return { config: {} as FunctionServices['config'] } as FunctionServices;
      },
      () => createLogger('silent'),
    );
    await expect(services()).rejects.toThrow(/cannot connect/);
    const first = await services();
    expect(await services()).toBe(first);
    expect(opens).toBe(2);
  });
});

describe('a function instance over a real shared ledger', () => {
  let release: () => void = () => {};
  let ledger: TestLedger;
  const sqs = mockClient(SQSClient);
  // A Redis that is down fails every test, with the command that starts it (never a skip).
  let down: Error | undefined;
  beforeAll(async () => {
    release = await holdService('redis');
    down = await requireService('redis').then(
      () => undefined,
      (err: Error) => err,
    );
    if (!down) ledger = await freshLedger('redis');
  }, 300_000);
  beforeEach(() => {
    if (down) throw down;
  });
  afterAll(async () => {
    await ledger?.cleanUp();
    release();
    sqs.restore();
  });
  afterEach(() => sqs.reset());

  it('builds the store, Keystone and Glance clients once and reuses them for every invocation', async () => {
    let opens = 0;
    const built: FunctionServices[] = [];
    const services = onColdStart(async () => {
      opens++;
      const s = await openFunctionServices({ ...OPENSTACK, ...ledger.env }, { metrics: () => {} });
      built.push(s);
      return s;
    });
    const handler = amazonMqHandler(services);
    const bodies = ignoredBodies();
    expect(bodies.length).toBeGreaterThanOrEqual(8);
    const first = await handler(rmqEvent(bodies.slice(0, 4)));
    const second = await handler(rmqEvent(bodies.slice(4)));
    expect(first.messages.ignored + second.messages.ignored).toBe(bodies.length);
    expect(opens).toBe(1);
    expect(built[0]!.pipeline.ledger.description).toMatch(/^redis:\/\/127\.0\.0\.1:6379\/0 keys gqe-test:/);
    expect(built[0]!.poison).toBeUndefined();
    await built[0]!.close();
  });

  it('sends poison to SQS_DEAD_LETTER_QUEUE_URL with the reason as a message attribute', async () => {
    sqs.on(SendMessageCommand).resolves({ MessageId: 'dlq-1' });
    const url = 'https://sqs.eu-west-1.amazonaws.com/123456789012/glance-quota-enforcer-ci-dead-letters';
    const services = await openFunctionServices({ ...OPENSTACK, ...ledger.env, SQS_DEAD_LETTER_QUEUE_URL: url }, { metrics: () => {} });
    expect(services.poison?.description).toBe(url);
    const { event, records } = sqsEvent(['not json at all', ignoredBodies()[0]!]);
    const reply = await sqsHandler(async () => services)(event);
    expect(reply.batchItemFailures).toEqual([]);
    const sent = sqs.commandCalls(SendMessageCommand).map((c) => c.args[0].input);
    expect(sent).toEqual([
      {
        QueueUrl: url,
        MessageBody: 'not json at all',
        MessageAttributes: {
          'gqe-reason': { DataType: 'String', StringValue: expect.stringMatching(/JSON/i) },
          'gqe-source-message-id': { DataType: 'String', StringValue: records[0]!.messageId },
        },
      },
    ]);
    await services.close();
  });
});

describe('functions/*.ts, the entry points serverless.yml names', () => {
  it('export a handler each, which fails without a shared ledger rather than counting alone', async () => {
    for (const entry of [amazonmqEntry, sqsEntry, reconcileEntry]) expect(typeof entry).toBe('function');
    const saved = { STORE_URL: process.env.STORE_URL, LOG_LEVEL: process.env.LOG_LEVEL };
    Object.assign(process.env, { STORE_URL: 'sqlite:///tmp/gqe-lambda.db', LOG_LEVEL: 'silent' });
    try {
      await expect(sqsEntry(sqsEvent(['{}']).event)).rejects.toThrow(/^STORE_URL: a function needs a ledger/);
    } finally {
      for (const [k, v] of Object.entries(saved))
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
    }
  });
});
