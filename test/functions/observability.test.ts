import { describe, expect, it } from 'vitest';
import { amazonMqHandler } from '../../src/doors/lambda/amazonmq.js';
import { NAMESPACE } from '../../src/doors/lambda/metrics.js';
import { reconcileHandler } from '../../src/doors/lambda/reconcile.js';
import { sqsHandler } from '../../src/doors/lambda/sqs.js';
import { MemoryStore } from '../../src/store/memory.js';
import { quotaTestBodies } from '../support/fixtures.js';
import { ATTACKER, MemoryGlance, capturedLog, realBodies, rmqEvent, scheduledEvent, servicesOver, sqsEvent, withOutage } from './support.js';

/*
 * What an operator sees of the functions in CloudWatch: metrics in embedded metric format on
 * stdout (one JSON document a line), and log lines that each carry the invocation's request id.
 */

type Emf = Record<string, any> & {
  _aws: { Timestamp: number; CloudWatchMetrics: { Namespace: string; Dimensions: string[][]; Metrics: { Name: string; Unit: string }[] }[] };
};

function capturedMetrics() {
  const docs: Emf[] = [];
  return { docs, sink: (line: string) => docs.push(JSON.parse(line)) };
}

/** Each document as CloudWatch reads it: `{ dimensions: values, metric: value }`, checked for EMF's rules on the way. */
function metricsOf(docs: Emf[]): Record<string, unknown>[] {
  return docs.map((d) => {
    const [directive] = d._aws.CloudWatchMetrics;
    expect(d._aws.CloudWatchMetrics).toHaveLength(1);
    expect(directive!.Namespace).toBe(NAMESPACE);
    expect(typeof d._aws.Timestamp).toBe('number');
    const out: Record<string, unknown> = {};
    for (const name of directive!.Dimensions.flat()) {
      expect(typeof d[name], `dimension ${name}`).toBe('string');
      out[name] = d[name];
    }
    for (const { Name, Unit } of directive!.Metrics) {
      expect(Unit).toBe('Count');
      expect(typeof d[Name], `metric ${Name}`).toBe('number');
      out[Name] = d[Name];
    }
    return out;
  });
}

const context = (awsRequestId: string) => ({ awsRequestId, getRemainingTimeInMillis: () => 900_000 });

describe('function metrics (CloudWatch EMF)', () => {
  it('sqs: messages by result, actions by kind, and no enforcement error', async () => {
    const { docs, sink } = capturedMetrics();
    const services = servicesOver({ store: new MemoryStore(), glance: MemoryGlance.fromBodies(quotaTestBodies()), metrics: sink });
    await sqsHandler(async () => services)(sqsEvent([...realBodies(), 'not JSON']).event, context('sqs-1'));
    expect(metricsOf(docs)).toEqual([
      { function: 'sqs', result: 'applied', Messages: 30 },
      { function: 'sqs', result: 'ignored', Messages: 9 },
      { function: 'sqs', result: 'invalid', Messages: 1 },
      { function: 'sqs', action: 'deleted', Actions: 2 },
      { function: 'sqs', EnforcementErrors: 0, StoreErrors: 0 },
    ]);
  });

  it('amazonmq: a failed enforcement is counted before the invocation fails; a failed store write too', async () => {
    const { docs, sink } = capturedMetrics();
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    glance.failing.add(ATTACKER);
    const store = withOutage(new MemoryStore());
    const handler = amazonMqHandler(async () => servicesOver({ store, glance, metrics: sink }));
    await expect(handler(rmqEvent(quotaTestBodies()), context('mq-1'))).rejects.toThrow(/enforcement failed for 1 project/);
    store.down = true;
    await expect(handler(rmqEvent(quotaTestBodies()), context('mq-2'))).rejects.toThrow(/ledger is unreachable/);
    expect(metricsOf(docs)).toEqual([
      { function: 'amazonmq', result: 'applied', Messages: 3 },
      { function: 'amazonmq', EnforcementErrors: 1, StoreErrors: 0 },
      { function: 'amazonmq', EnforcementErrors: 0, StoreErrors: 1 },
    ]);
  });

  it("reconcile: the run's actions, and an error when Glance does not answer", async () => {
    const { docs, sink } = capturedMetrics();
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    // Two runs back to back, where the schedule keeps minutes between them: no interval here.
    const services = servicesOver({ store: new MemoryStore(), glance, metrics: sink, env: { ENFORCEMENT_MODE: 'dry-run', ENFORCE_INTERVAL_SECONDS: '0' } });
    await reconcileHandler(async () => services)(scheduledEvent, context('rec-1'));
    glance.failing.add('*');
    await expect(reconcileHandler(async () => services)(scheduledEvent, context('rec-2'))).rejects.toThrow(/did not answer/);
    expect(metricsOf(docs)).toEqual([
      { function: 'reconcile', action: 'would-delete', Actions: 2 },
      { function: 'reconcile', EnforcementErrors: 0, StoreErrors: 0 },
      { function: 'reconcile', EnforcementErrors: 1, StoreErrors: 0 },
    ]);
  });
});

describe('function logs', () => {
  it("carry the invocation's request id on every line, the pipeline's own included, and only that invocation's", async () => {
    const { log, lines } = capturedLog('debug');
    const services = servicesOver({ store: new MemoryStore(), glance: MemoryGlance.fromBodies(quotaTestBodies()), log });
    const handler = sqsHandler(async () => services);
    // Two invocations at once, as the runtime never does in one instance, but a test can: the id follows each.
    await Promise.all([handler(sqsEvent(quotaTestBodies()).event, context('req-a')), handler(sqsEvent(['not JSON']).event, context('req-b'))]);
    expect(lines.length).toBeGreaterThan(3);
    expect(lines.filter((l) => l.requestId === undefined)).toEqual([]);
    // The pipeline's action lines (written by the logger it was built with) carry it too.
    const deletions = lines.filter((l) => l.imageId !== undefined);
    expect(deletions.length).toBeGreaterThan(0);
    expect(new Set(deletions.map((l) => l.requestId))).toEqual(new Set(['req-a']));
    expect(lines.filter((l) => /invalid notification/.test(l.msg)).map((l) => l.requestId)).toEqual(['req-b']);
    // Outside an invocation, no request id.
    services.log.info('between invocations');
    expect(lines.at(-1)).not.toHaveProperty('requestId');
  });
});
