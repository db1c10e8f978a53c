import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Pipeline } from '../../src/pipeline/index.js';
import { amazonMqHandler, handleRabbitMqEvent } from '../../src/doors/lambda/amazonmq.js';
import { EventShapeError } from '../../src/doors/lambda/events.js';
import type { FunctionServices } from '../../src/doors/lambda/instance.js';
import { handleSqsEvent, sqsHandler } from '../../src/doors/lambda/sqs.js';
import { replayFile, type ReplaySummary } from '../../src/doors/replay.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { compareLedgers } from '../support/ledger-oracle.js';
import type { LedgerKind } from '../support/services.js';
import {
  ATTACKER,
  ATTACKER_LIMITED,
  LAB_PROJECT,
  KeptPoison,
  MemoryGlance,
  capturedLog,
  chunks,
  freshLedgerPerTest,
  realBodies,
  rmqEvent,
  servicesOver,
  sqsEvent,
  withOutage,
} from './support.js';
import { envelope, inner, quotaTestBodies } from '../support/fixtures.js';
import { ev } from '../support/events.js';
import { pipelineOf } from '../../src/composition-root.js';
import { createLogger } from '../../src/log.js';
import { UnifiedLimits } from '../../src/openstack/limits.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { projectLimit } from '../support/keystone-standin.js';

/** Invocations back to back that decide one project each time: no interval kept between them. */
const AT_ONCE = { ENFORCE_INTERVAL_SECONDS: '0' };

/**
 * A body the door accepts but the store refuses: the project already holds 2^53 - 1 bytes (set
 * up directly in the store), so one more image of 5 bytes would take its total past what the
 * ledger keeps exactly. Data no door can see as wrong, whatever it validates.
 */
async function storeRefusedBody(store: LedgerStore, hugeId = 'huge'): Promise<string> {
  const first = inner(quotaTestBodies()[0]!);
  await store.applyEvents([ev({ imageId: hugeId, projectId: first.payload.owner, status: 'active', size: Number.MAX_SAFE_INTEGER - 1 })], 1);
  return envelope({ ...first, message_id: 'tipping-over', payload: { ...first.payload, status: 'active', size: 5 } });
}

/*
 * The function doors over a shared ledger (the only kind function mode accepts), fed Lambda
 * events built from the real bodies captured from Glance 25.1, held to the same results as
 * `replay` over the same bodies.
 */

const dir = mkdtempSync(join(tmpdir(), 'gqe-functions-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** `replay` (src/doors/replay.ts) of the bodies into a fresh memory ledger, with the same limits. */
async function replayOf(bodies: readonly string[]): Promise<{ oracle: Pipeline; summary: ReplaySummary }> {
  const file = join(dir, `replay-${Math.random().toString(36).slice(2)}.jsonl`);
  writeFileSync(file, bodies.join('\n') + '\n');
  const oracle = pipelineOf({ store: new MemoryStore(), limits: ATTACKER_LIMITED });
  return { oracle, summary: await replayFile(oracle, file) };
}

const GARBAGE = 'this is not JSON {';
const NOT_A_NOTIFICATION = JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': JSON.stringify({ hello: 'world' }) });

describe.each<Exclude<LedgerKind, 'sqlite'>>(['redis', 'postgres'])('function handlers over a %s ledger', (kind) => {
  const shared = freshLedgerPerTest(kind);

  it('amazonmq: batches of the real bodies give the same ledger and the same decision as replay', async () => {
    const bodies = realBodies();
    const { oracle, summary } = await replayOf(bodies);
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const services = servicesOver({ store: shared.store, glance, env: { ENFORCEMENT_MODE: 'dry-run' } });
    const counts = { applied: 0, duplicate: 0, ignored: 0, invalid: 0 };
    // Lambda hands the queue over in batches; 10 here, split across two event payloads' worth.
    for (const batch of chunks(bodies, 10)) {
      const { messages } = await handleRabbitMqEvent(services, rmqEvent(batch));
      for (const k of Object.keys(counts) as (keyof typeof counts)[]) counts[k] += messages[k];
    }
    expect(counts).toEqual({ applied: summary.messages.applied, duplicate: 0, ignored: summary.messages.ignored, invalid: 0 });
    // The lab project's images were all deleted in the run: only the attacker's project is live.
    expect(await compareLedgers(services.pipeline, oracle)).toMatchObject({ differences: [], projects: 1 });
    // The decision replay reports is what the function acted on: in dry-run, one would-delete each.
    const toDelete = summary.projects.find((p) => p.projectId === ATTACKER)!.toDelete;
    expect(toDelete).toHaveLength(2);
    const actions = await shared.store.actions({ projectId: ATTACKER });
    expect(actions.map((a) => a.action)).toEqual(['would-delete', 'would-delete']);
    expect(actions.map((a) => a.imageId).sort()).toEqual([...toDelete].sort());
    expect(glance.deleted).toEqual([]);
  });

  it('sqs: the same bodies give the same ledger as replay, and no record to retry', async () => {
    const bodies = realBodies();
    const { oracle, summary } = await replayOf(bodies);
    const services = servicesOver({ store: shared.store, glance: MemoryGlance.fromBodies(quotaTestBodies()), env: { ENFORCEMENT_MODE: 'dry-run' } });
    let applied = 0;
    for (const batch of chunks(bodies, 10)) {
      const { event } = sqsEvent(batch);
      const reply = await sqsHandler(async () => services)(event);
      expect(reply.batchItemFailures).toEqual([]);
      applied += reply.messages.applied;
    }
    expect(applied).toBe(summary.messages.applied);
    expect(await compareLedgers(services.pipeline, oracle)).toMatchObject({ differences: [] });
  });

  it('amazonmq in enforce mode deletes exactly the images replay says to delete', async () => {
    const { summary } = await replayOf(realBodies());
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const services = servicesOver({ store: shared.store, glance });
    await handleRabbitMqEvent(services, rmqEvent(realBodies()));
    expect(glance.deleted.sort()).toEqual([...summary.projects.find((p) => p.projectId === ATTACKER)!.toDelete].sort());
    expect(await shared.store.usage(ATTACKER)).toMatchObject({ image_count_total: 1 });
    expect((await shared.store.actions()).map((a) => a.action)).toEqual(['deleted', 'deleted']);
  });

  it('amazonmq: a batch with poison inside succeeds; the poison is logged with its reason and body', async () => {
    const { log, lines } = capturedLog();
    const services = servicesOver({ store: shared.store, glance: MemoryGlance.fromBodies(quotaTestBodies()), log, env: { ENFORCEMENT_MODE: 'dry-run' } });
    const [a, b, c] = quotaTestBodies();
    const notBase64 = { raw: { basicProperties: {}, redelivered: true, data: '%%% not base64 %%%' } };
    const summary = await handleRabbitMqEvent(services, rmqEvent([a!, GARBAGE, b!, notBase64, NOT_A_NOTIFICATION, c!]));
    expect(summary.messages).toEqual({ applied: 3, duplicate: 0, ignored: 0, invalid: 3 });
    expect(await shared.store.usage(ATTACKER)).toMatchObject({ image_count_total: 3 });
    const poison = lines.filter((l) => l.msg === 'invalid notification set aside; the batch goes on');
    expect(poison.map((l) => [l.position, l.queue])).toEqual([
      [1, 'glance-quota-enforcer::/'],
      [3, 'glance-quota-enforcer::/'],
      [4, 'glance-quota-enforcer::/'],
    ]);
    expect(poison[0]).toMatchObject({ body: GARBAGE, headers: { 'x-origin': 'glance-api', 'x-count': 1 } });
    expect(poison[1]!.reason).toMatch(/^aws:rmq message: data: /);
    expect(poison[2]!.reason).toMatch(/oslo\.message|event_type|message_id|payload/);
  });

  it('sqs: poison goes to the dead-letter queue with its reason and is not retried', async () => {
    const poison = new KeptPoison();
    const services = servicesOver({
      store: shared.store,
      glance: MemoryGlance.fromBodies(quotaTestBodies()),
      poison,
      env: { ENFORCEMENT_MODE: 'dry-run', ...AT_ONCE },
    });
    const [a, b] = quotaTestBodies();
    const { event, records } = sqsEvent([a!, GARBAGE, b!, NOT_A_NOTIFICATION]);
    const reply = await handleSqsEvent(services, event);
    expect(reply.batchItemFailures).toEqual([]);
    expect(reply.deadLettered).toBe(2);
    expect(poison.sent.map((p) => [p.sourceMessageId, p.body])).toEqual([
      [records[1]!.messageId, GARBAGE],
      [records[3]!.messageId, NOT_A_NOTIFICATION],
    ]);
    expect(poison.sent[0]!.reason).toMatch(/JSON/i);
    // Two creates put the project over its limit of 1: Glance's listing, which has all three
    // images, was asked, and its count overwrote the ledger's.
    expect(await shared.store.usage(ATTACKER)).toMatchObject({ image_count_total: 3 });

    // Without a dead-letter queue URL, or when the send fails, the poison is reported, and only it:
    // the queue's redrive policy moves it after maxReceiveCount receives.
    for (const services2 of [
      servicesOver({ store: shared.store, glance: new MemoryGlance(), env: AT_ONCE }),
      servicesOver({ store: shared.store, glance: new MemoryGlance(), poison: Object.assign(new KeptPoison(), { failing: true }), env: AT_ONCE }),
    ]) {
      const again = sqsEvent([GARBAGE, a!]);
      const r = await handleSqsEvent(services2, again.event);
      expect(r.batchItemFailures).toEqual([{ itemIdentifier: again.records[0]!.messageId }]);
    }
  });

  it('sqs: a record the store refuses is reported alone, dead-lettered with its reason; the others count', async () => {
    const poison = new KeptPoison();
    const services = servicesOver({
      store: shared.store,
      glance: MemoryGlance.fromBodies(quotaTestBodies()),
      poison,
      env: { ENFORCEMENT_MODE: 'dry-run', ...AT_ONCE },
    });
    const refused = await storeRefusedBody(shared.store);
    const [, b, c] = quotaTestBodies();
    const { event, records } = sqsEvent([b!, refused, c!]);
    const reply = await handleSqsEvent(services, event);
    expect(reply.messages).toEqual({ applied: 2, duplicate: 0, ignored: 0, invalid: 1 });
    expect(reply.batchItemFailures).toEqual([]);
    expect(poison.sent.map((p) => p.sourceMessageId)).toEqual([records[1]!.messageId]);
    expect(poison.sent[0]!.reason).toMatch(/ledger store refused it: .*2\^53/);
    // Without a dead-letter queue URL, exactly that record is reported for the redrive policy.
    // (The enforcement above listed the project in Glance, which has no 'huge' image: the ledger
    // lost it. Another one makes the next body unstorable again.)
    await storeRefusedBody(shared.store, 'huge-again');
    const bare = servicesOver({ store: shared.store, glance: new MemoryGlance(), env: AT_ONCE });
    const again = sqsEvent([refused, quotaTestBodies()[0]!]);
    const r = await handleSqsEvent(bare, again.event);
    expect(r.batchItemFailures).toEqual([{ itemIdentifier: again.records[0]!.messageId }]);
    expect(r.messages).toMatchObject({ applied: 1, invalid: 1 });
  });

  it('amazonmq: a message the store refuses is set aside with its reason; the invocation succeeds', async () => {
    const { log, lines } = capturedLog();
    const services = servicesOver({ store: shared.store, glance: MemoryGlance.fromBodies(quotaTestBodies()), log, env: { ENFORCEMENT_MODE: 'dry-run' } });
    const refused = await storeRefusedBody(shared.store);
    const [, b, c] = quotaTestBodies();
    const summary = await handleRabbitMqEvent(services, rmqEvent([b!, refused, c!]));
    expect(summary.messages).toEqual({ applied: 2, duplicate: 0, ignored: 0, invalid: 1 });
    const setAside = lines.filter((l) => l.msg === 'invalid notification set aside; the batch goes on');
    expect(setAside.map((l) => l.position)).toEqual([1]);
    expect(setAside[0]!.reason).toMatch(/ledger store refused it/);
    expect(setAside[0]!.body).toBe(refused);
  });

  it('amazonmq: a store outage fails the invocation; the redelivered batch is then applied once', async () => {
    const failing = withOutage(shared.store);
    const services = servicesOver({ store: failing, glance: MemoryGlance.fromBodies(quotaTestBodies()), env: { ENFORCEMENT_MODE: 'dry-run' } });
    const event = rmqEvent(realBodies());
    failing.down = true;
    await expect(amazonMqHandler(async () => services)(event)).rejects.toThrow(/ledger is unreachable/);
    expect(await shared.store.projects()).toEqual([]);
    failing.down = false;
    const { messages } = await handleRabbitMqEvent(services, event);
    expect(messages.applied).toBe(30);
    const { oracle } = await replayOf(realBodies());
    expect(await compareLedgers(services.pipeline, oracle)).toMatchObject({ differences: [] });
  });

  it('sqs: a store outage reports every record of the batch, since they shared one write', async () => {
    const failing = withOutage(shared.store);
    const services = servicesOver({ store: failing, glance: new MemoryGlance(), poison: new KeptPoison() });
    const { event, records } = sqsEvent([...quotaTestBodies(), GARBAGE]);
    failing.down = true;
    const reply = await handleSqsEvent(services, event);
    expect(reply.batchItemFailures).toEqual(records.map((r) => ({ itemIdentifier: r.messageId })));
  });

  it('sqs: an enforcement failure reports exactly the records of that project; their retry enforces it', async () => {
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const services = servicesOver({ store: shared.store, glance });
    const { event, records } = sqsEvent(realBodies());
    glance.failing.add(ATTACKER);
    const reply = await handleSqsEvent(services, event);
    const attackerRecords = records.filter((r) => quotaTestBodies().includes(r.body));
    expect(reply.batchItemFailures).toEqual(attackerRecords.map((r) => ({ itemIdentifier: r.messageId })));
    expect(glance.deleted).toEqual([]);

    // SQS delivers the reported records again: duplicates now, which still bring the decision back.
    glance.failing.clear();
    const retry = {
      Records: (event as { Records: { messageId: string }[] }).Records.filter((r) => reply.batchItemFailures.some((f) => f.itemIdentifier === r.messageId)),
    };
    const second = await handleSqsEvent(services, retry);
    expect(second.messages).toEqual({ applied: 0, duplicate: 3, ignored: 0, invalid: 0 });
    expect(second.batchItemFailures).toEqual([]);
    expect(glance.deleted).toHaveLength(2);
    expect(await shared.store.usage(ATTACKER)).toMatchObject({ image_count_total: 1 });
    expect(await shared.store.usage(LAB_PROJECT)).toMatchObject({ image_count_total: 0 });
  });

  it('amazonmq: an enforcement failure fails the invocation; the redelivered batch enforces without counting twice', async () => {
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const services = servicesOver({ store: shared.store, glance });
    const event = rmqEvent(quotaTestBodies());
    glance.failing.add(ATTACKER);
    await expect(handleRabbitMqEvent(services, event)).rejects.toThrow(
      /enforcement failed for 1 project\(s\): 81566b2f2198430fbd7aa2d6c0954a76: Glance .* did not answer/,
    );
    expect(await shared.store.usage(ATTACKER)).toMatchObject({ image_count_total: 3 });
    glance.failing.clear();
    const again = await handleRabbitMqEvent(services, event);
    expect(again.messages).toEqual({ applied: 0, duplicate: 3, ignored: 0, invalid: 0 });
    expect(again.actions).toBe(2);
    expect(await shared.store.usage(ATTACKER)).toMatchObject({ image_count_total: 1 });
  });

  it('amazonmq: a cold start while Keystone cannot be read deletes nothing on the static limits; the redelivery acts once it answers', async () => {
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const keystone = { down: true };
    const reader = {
      registeredLimits: async () => {
        if (keystone.down) throw new Error('keystone: GET http://keystone/v3/registered_limits got no answer after 4 attempts');
        return [];
      },
      allProjectLimits: async () => ({ limits: [projectLimit(ATTACKER, 'image_count_total', 2)], truncated: false }),
      projectLimits: async () => [],
    };
    let now = Date.now();
    // QUOTA_LIMITS says 1 for everyone; Keystone will say 2 for the attacker.
    const limits = new UnifiedLimits(reader, { fallback: new StaticLimits({ image_count_total: 1 }), now: () => now, log: createLogger('silent') });
    const services = servicesOver({ store: shared.store, glance, limits });
    const event = rmqEvent(quotaTestBodies());
    await expect(handleRabbitMqEvent(services, event)).rejects.toThrow(/limits of 81566b2f2198430fbd7aa2d6c0954a76 unavailable/);
    expect(glance.deleted).toEqual([]);
    keystone.down = false;
    now += 60_000;
    const again = await handleRabbitMqEvent(services, event);
    expect(again.actions).toBe(1);
    expect(glance.deleted).toHaveLength(1);
  });

  it('amazonmq: a project another instance decided a moment ago is decided once that lease ends, within the invocation', async () => {
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const services = servicesOver({ store: shared.store, glance, env: { ENFORCE_INTERVAL_SECONDS: '5' } });
    // Another instance's decision began 3.8 s ago: it keeps the project 1.2 s more.
    expect(await shared.store.acquireLease(`project:${ATTACKER}`, 'other-instance:1', 1_200, Date.now())).toBe(true);
    const started = Date.now();
    const reply = await handleRabbitMqEvent(services, rmqEvent(quotaTestBodies()));
    const waited = Date.now() - started;
    expect(reply.actions).toBe(2);
    expect(glance.deleted).toHaveLength(2);
    // Waited for the lease's end, not a whole interval (5 s) after being refused.
    expect(waited).toBeGreaterThanOrEqual(1_100);
    expect(waited).toBeLessThan(4_000);
  });

  it('amazonmq: a project whose enforcement keeps failing stops failing the batch after ENFORCE_MAX_ATTEMPTS invocations, and says so', async () => {
    const glance = MemoryGlance.fromBodies(quotaTestBodies());
    const { log, lines } = capturedLog();
    const emf: Record<string, unknown>[] = [];
    const services = {
      ...servicesOver({ store: shared.store, glance, log, env: { ENFORCE_MAX_ATTEMPTS: '3' } }),
      metrics: (line: string) => void emf.push(JSON.parse(line)),
    };
    const event = rmqEvent(quotaTestBodies());
    // Glance never answers for this project: every redelivery of the batch fails it again.
    glance.failing.add(ATTACKER);
    await expect(handleRabbitMqEvent(services, event)).rejects.toThrow(/enforcement failed for 1 project/);
    await expect(handleRabbitMqEvent(services, event)).rejects.toThrow(/enforcement failed for 1 project/);
    const third = await handleRabbitMqEvent(services, event);
    expect(third.abandoned).toEqual([ATTACKER]);
    expect(lines.filter((l) => l.level === 50 && /left to the reconcile/.test(l.msg))).toEqual([expect.objectContaining({ projectId: ATTACKER, attempts: 3 })]);
    expect(emf.filter((d) => 'EnforcementAbandoned' in d)).toEqual([expect.objectContaining({ EnforcementAbandoned: 1, EnforcementErrors: 1 })]);
    expect(glance.deleted).toEqual([]);
    // Glance answers again: the next batch naming the project enforces it, and the count starts over.
    glance.failing.clear();
    const recovered = await handleRabbitMqEvent(services, event);
    expect(recovered).toMatchObject({ actions: 2, abandoned: [] });
    expect(await shared.store.getState(`enforce.failures:${ATTACKER}`)).toBe('0');
  });

  it("sqs and amazonmq: projects not started before the invocation's deadline are deferred, not failed; their records come back", async () => {
    // A second project over its limit, sorting after the attacker's: decided second.
    const LATE = 'ffff0000000000000000000000000001';
    const lateBodies = quotaTestBodies().map((body) => {
      const m = inner(body);
      const other = (uuid: string) => `ffff${uuid.slice(4)}`;
      return envelope({ ...m, message_id: other(m.message_id), payload: { ...m.payload, id: other(m.payload.id), owner: LATE } });
    });
    const glance = MemoryGlance.fromBodies([...quotaTestBodies(), ...lateBodies]);
    const time = { nowMs: Date.now() };
    // Each listing takes 6 s of the function's time; it was given 15 s, less the 10 s margin.
    glance.onList = () => {
      time.nowMs += 6_000;
    };
    const limits = { limitsFor: async () => ({ image_count_total: 1 }) };
    const context = () => ({ awsRequestId: 'deadline', getRemainingTimeInMillis: () => 15_000 });
    const services = servicesOver({ store: shared.store, glance, limits, clock: () => time.nowMs, env: { ENFORCEMENT_MODE: 'dry-run' } });
    const { event, records } = sqsEvent([...quotaTestBodies(), ...lateBodies]);
    const reply = await sqsHandler(async () => services)(event, context());
    expect(reply.messages).toEqual({ applied: 6, duplicate: 0, ignored: 0, invalid: 0 });
    // The attacker was decided (its records are done); the late project was not started.
    expect(reply.batchItemFailures).toEqual(records.slice(quotaTestBodies().length).map((r) => ({ itemIdentifier: r.messageId })));
    expect(glance.calls.filter((c) => c.startsWith('LIST'))).toEqual([`LIST ${ATTACKER}`]);
    // Amazon MQ redelivers whole batches: an invocation left less than the margin starts no
    // project, and fails for the deferred ones without counting them as failures.
    const late = { awsRequestId: 'late', getRemainingTimeInMillis: () => 9_000 };
    await expect(amazonMqHandler(async () => services)(rmqEvent([...quotaTestBodies(), ...lateBodies]), late)).rejects.toThrow(
      new RegExp(`2 project\\(s\\) deferred .*${ATTACKER}, ${LATE}`),
    );
    expect(await shared.store.getState(`enforce.failures:${ATTACKER}`)).toBeUndefined();
    expect(await shared.store.getState(`enforce.failures:${LATE}`)).toBeUndefined();
  });
});

describe('the events the handlers accept', () => {
  const services: FunctionServices = servicesOver({ store: new MemoryStore(), glance: new MemoryGlance() });

  it('fails an invocation whose event is not from its trigger, naming the field', async () => {
    await expect(handleRabbitMqEvent(services, sqsEvent(['{}']).event)).rejects.toThrow(EventShapeError);
    await expect(handleRabbitMqEvent(services, { eventSource: 'aws:rmq', eventSourceArn: 'arn', rmqMessagesByQueue: { 'no-vhost': [] } })).rejects.toThrow(
      /not an aws:rmq event \(rmqMessagesByQueue\.no-vhost: expected "<queue>::<vhost>", got 'no-vhost'\)/,
    );
    await expect(handleSqsEvent(services, { Records: [{ body: 'x' }] })).rejects.toThrow(/not an aws:sqs event \(Records\.0\.messageId: /);
  });

  it('reads every queue of an aws:rmq event, and an empty batch is no work', async () => {
    const [a, b] = quotaTestBodies();
    const one = rmqEvent([a!]) as { rmqMessagesByQueue: Record<string, unknown[]> };
    const two = rmqEvent([b!], 'glance-quota-enforcer::/openstack') as { rmqMessagesByQueue: Record<string, unknown[]> };
    const event = { ...one, rmqMessagesByQueue: { ...one.rmqMessagesByQueue, ...two.rmqMessagesByQueue } };
    expect((await handleRabbitMqEvent(services, event)).messages.applied).toBe(2);
    expect((await handleRabbitMqEvent(services, rmqEvent([]))).messages).toEqual({ applied: 0, duplicate: 0, ignored: 0, invalid: 0 });
    expect(await handleSqsEvent(services, { Records: [] })).toMatchObject({ batchItemFailures: [] });
  });
});
