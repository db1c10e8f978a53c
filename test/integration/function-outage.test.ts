import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { amazonMqHandler } from '../../src/doors/lambda/amazonmq.js';
import { handleSqsEvent } from '../../src/doors/lambda/sqs.js';
import type { LedgerStore } from '../../src/store/port.js';
import { KeptPoison, MemoryGlance, realBodies, rmqEvent, servicesOver, sqsEvent } from '../functions/support.js';
import { quotaTestBodies } from '../support/fixtures.js';
import { freshLedger, holdService, withServiceStopped, type TestLedger } from '../support/services.js';

/*
 * The function handlers while their real PostgreSQL ledger is stopped (test/functions/ covers the
 * same rules with a ledger whose writes fail on demand; here the outage is the server's own).
 * Runs in the integration step, where no other suite uses PostgreSQL at the same time.
 */
describe('function handlers during a real PostgreSQL outage', () => {
  let release: () => void = () => {};
  let ledger: TestLedger;
  let store: LedgerStore;
  beforeAll(async () => {
    release = await holdService('postgres');
    ledger = await freshLedger('postgres');
    store = await ledger.open();
  }, 300_000);
  afterAll(async () => {
    await store?.close();
    await ledger?.cleanUp();
    release();
  });

  it('amazonmq fails the invocation and sqs reports every record while the ledger is down; both apply once it is back', async () => {
    // The two doors decide the same project back to back: no interval kept between them here.
    const atOnce = { ENFORCE_INTERVAL_SECONDS: '0' };
    const mqServices = servicesOver({ store, glance: MemoryGlance.fromBodies(quotaTestBodies()), env: { ENFORCEMENT_MODE: 'dry-run', ...atOnce } });
    const sqsServices = servicesOver({ store, glance: new MemoryGlance(), poison: new KeptPoison(), env: atOnce });
    const mq = rmqEvent(realBodies());
    const sqs = sqsEvent(quotaTestBodies());
    let mqDuring: unknown;
    let sqsDuring: unknown;
    await withServiceStopped('postgres', 3_000, async () => {
      mqDuring = await amazonMqHandler(async () => mqServices)(mq).then(
        () => 'succeeded',
        (err: Error) => err.message,
      );
      sqsDuring = await handleSqsEvent(sqsServices, sqs.event);
    });
    // Lambda retries a failed MQ invocation whole; nothing of it was committed.
    expect(mqDuring).toMatch(/ledger|connect|terminat|ECONNREFUSED/i);
    expect(sqsDuring).toMatchObject({ batchItemFailures: sqs.records.map((r) => ({ itemIdentifier: r.messageId })) });

    // Back: the redelivered batches are applied, once.
    await amazonMqHandler(async () => mqServices)(mq);
    const retried = await handleSqsEvent(sqsServices, sqs.event);
    expect(retried.batchItemFailures).toEqual([]);
    // Every record is in the ledger now (the Amazon MQ batch above carried the same bodies).
    expect(retried.messages.applied + retried.messages.duplicate).toBe(quotaTestBodies().length);
    const again = await handleSqsEvent(sqsServices, sqs.event);
    expect(again.messages).toMatchObject({ applied: 0, duplicate: quotaTestBodies().length });
  }, 120_000);
});
