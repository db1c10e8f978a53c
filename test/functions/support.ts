/**
 * What the function tests share: Lambda events built from real captured bodies, a Glance that
 * lives in memory, a store that can be made to fail, and services wired as a cold start wires
 * them (src/doors/lambda/instance.ts) but over those.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config.js';
import type { DeleteOutcome, ImageService, ListedPage, ListPosition, UnprotectOutcome } from '../../src/pipeline/index.js';
import type { MetricsSink } from '../../src/doors/lambda/metrics.js';
import type { FunctionServices, PoisonQueue } from '../../src/doors/lambda/instance.js';
import type { GlanceImage } from '../../src/ledger/glance-image.js';
import { createLogger } from '../../src/log.js';
import type { ProjectLimits } from '../../src/quota/limits.js';
import type { LimitSource } from '../../src/quota/limits.js';
import type { LedgerStore } from '../../src/store/port.js';
import { FIXTURES, inner, quotaTestBodies } from '../support/fixtures.js';
import { freshLedger, holdService, requireService, type TestLedger } from '../support/services.js';
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { pipelineOf } from '../../src/composition-root.js';

/** The lab's `verify` run: 36 bodies as Glance sent them (one project, three images, all deleted at the end). */
export function labVerifyBodies(): string[] {
  return readFileSync(join(FIXTURES, 'lab-verify.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '');
}

/** The quota test: the attacker project creates three queued images in one second. */
export const ATTACKER = '81566b2f2198430fbd7aa2d6c0954a76';
export const LAB_PROJECT = '615696c542784834ac46630e5a22dbe3';

/** Every real body: the verify run, then the attacker's three creates. */
export function realBodies(): string[] {
  return [...labVerifyBodies(), ...quotaTestBodies()];
}

/** The attacker may keep one image; everyone else is unlimited. */
export const ATTACKER_LIMITED: LimitSource = {
  limitsFor: async (projectId: string): Promise<ProjectLimits> => (projectId === ATTACKER ? { image_count_total: 1 } : {}),
};

/** A RabbitMQ string header as Lambda renders it. */
export const bytes = (text: string) => ({ bytes: [...Buffer.from(text, 'utf8')] });

/** An `aws:rmq` event as Lambda's Amazon MQ event source builds it (documented shape). */
export function rmqEvent(bodies: readonly (string | { raw: unknown })[], queue = 'glance-quota-enforcer::/'): unknown {
  return {
    eventSource: 'aws:rmq',
    eventSourceArn: 'arn:aws:mq:eu-west-1:123456789012:broker:glance:b-0f3c2a1e-1111-2222-3333-444455556666',
    rmqMessagesByQueue: {
      [queue]: bodies.map((body) =>
        typeof body === 'string'
          ? {
              basicProperties: {
                contentType: 'application/json',
                contentEncoding: 'utf-8',
                headers: { 'x-origin': bytes('glance-api'), 'x-count': 1 },
                deliveryMode: 2,
                priority: 0,
                correlationId: null,
                replyTo: null,
                expiration: null,
                messageId: null,
                timestamp: null,
                type: null,
                userId: 'glance',
                appId: null,
                clusterId: null,
                bodySize: Buffer.byteLength(body),
              },
              redelivered: false,
              data: Buffer.from(body, 'utf8').toString('base64'),
            }
          : body.raw,
      ),
    },
  };
}

export interface SqsTestRecord {
  messageId: string;
  body: string;
}

/** An SQS event as Lambda's SQS event source builds it; message ids are returned beside it. */
export function sqsEvent(bodies: readonly string[]): { event: unknown; records: SqsTestRecord[] } {
  const records = bodies.map((body) => ({ messageId: randomUUID(), body }));
  return {
    records,
    event: {
      Records: records.map((r) => ({
        messageId: r.messageId,
        receiptHandle: `AQEB${r.messageId}`,
        body: r.body,
        attributes: {
          ApproximateReceiveCount: '1',
          SentTimestamp: '1764188861984',
          SenderId: 'AIDAEXAMPLE',
          ApproximateFirstReceiveTimestamp: '1764188861990',
        },
        messageAttributes: {},
        md5OfBody: 'd41d8cd98f00b204e9800998ecf8427e',
        eventSource: 'aws:sqs',
        eventSourceARN: 'arn:aws:sqs:eu-west-1:123456789012:glance-quota-enforcer-ci-notifications',
        awsRegion: 'eu-west-1',
      })),
    },
  };
}

/** A scheduled EventBridge event, as the `schedule` trigger sends it. */
export const scheduledEvent = {
  version: '0',
  id: '53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa',
  'detail-type': 'Scheduled Event',
  source: 'aws.events',
  account: '123456789012',
  time: '2026-11-26T21:00:00Z',
  region: 'eu-west-1',
  resources: ['arn:aws:events:eu-west-1:123456789012:rule/glance-quota-enforcer-ci-ReconcileEventsRuleSchedule1'],
  detail: {},
};

/** Glance's images as its API shows them, kept in memory; a project's calls can be made to fail. */
export class MemoryGlance implements ImageService {
  readonly images = new Map<string, GlanceImage>();
  readonly deleted: string[] = [];
  readonly calls: string[] = [];
  /** Owners whose listing (by owner), reads and deletes fail, as an unreachable Glance would; '*': every call. */
  readonly failing = new Set<string>();
  /** Called on every listing, e.g. to move a test clock. */
  onList: (owner: string | undefined) => void = () => {};
  /** Called on every read of one image, e.g. to start its upload between the listing and the act. */
  onGet: (id: string) => void = () => {};

  add(...images: GlanceImage[]): this {
    for (const i of images) this.images.set(i.id, i);
    return this;
  }

  /** The images a body's payload describes, as Glance shows them. */
  static fromBodies(bodies: readonly string[]): MemoryGlance {
    const glance = new MemoryGlance();
    for (const body of bodies) {
      const p = inner(body).payload;
      glance.add({
        id: p.id,
        owner: p.owner,
        status: p.status,
        protected: p.protected,
        size: p.size,
        created_at: p.created_at,
        updated_at: p.updated_at,
        visibility: p.visibility,
      });
    }
    return glance;
  }

  private fail(owner: string | null | undefined): void {
    if (this.failing.has('*') || (owner && this.failing.has(owner))) throw new Error(`Glance at http://glance.test:9292 did not answer (project ${owner})`);
  }

  async getImage(id: string): Promise<GlanceImage | null> {
    this.calls.push(`GET ${id}`);
    this.onGet(id);
    const image = this.images.get(id);
    this.fail(image?.owner);
    return image ? { ...image } : null;
  }

  async deleteImage(id: string): Promise<DeleteOutcome> {
    this.calls.push(`DELETE ${id}`);
    const image = this.images.get(id);
    this.fail(image?.owner);
    if (!image) return { result: 'gone' };
    // As Glance: a protected image cannot be deleted, not even by an admin.
    if (image.protected) return { result: 'refused', status: 403, reason: `Image ${id} is protected and cannot be deleted.` };
    this.images.delete(id);
    this.deleted.push(id);
    return { result: 'deleted' };
  }

  async unprotectImage(id: string): Promise<UnprotectOutcome> {
    this.calls.push(`UNPROTECT ${id}`);
    const image = this.images.get(id);
    this.fail(image?.owner);
    if (!image) return { result: 'gone' };
    image.protected = false;
    return { result: 'unprotected' };
  }

  /** Pages of `pageSize` images by id, resumable by marker as Glance's (no hidden pass: the fake has no os_hidden). */
  pageSize = 1000;

  async *listPages(query: { from?: ListPosition } = {}): AsyncIterable<ListedPage> {
    if (query.from?.hidden) {
      yield { images: [], next: null };
      return;
    }
    let marker = query.from?.marker;
    for (;;) {
      this.calls.push(`LIST * from ${marker ?? 'start'}`);
      this.onList(undefined);
      this.fail(null);
      const sorted = [...this.images.values()].sort((a, b) => (a.id < b.id ? -1 : 1)).filter((i) => marker === undefined || i.id > marker);
      const images = sorted.slice(0, this.pageSize).map((i) => ({ ...i }));
      const last = images.at(-1)?.id;
      const next = sorted.length > this.pageSize && last ? { hidden: false, marker: last } : { hidden: true };
      yield { images, next };
      if (next.hidden) {
        yield { images: [], next: null };
        return;
      }
      marker = last;
    }
  }

  async *listImages(query: { owner?: string } = {}): AsyncIterable<GlanceImage> {
    this.calls.push(`LIST ${query.owner ?? '*'}`);
    this.onList(query.owner);
    this.fail(query.owner ?? null);
    for (const image of [...this.images.values()].sort((a, b) => (a.id < b.id ? -1 : 1))) {
      if (query.owner === undefined || image.owner === query.owner) yield { ...image };
    }
  }
}

/** A store whose batch writes fail while `down` is set, as a store that cannot be reached. */
export function withOutage(store: LedgerStore): LedgerStore & { down: boolean } {
  const state = { down: false };
  return new Proxy(store, {
    get(target, prop, receiver) {
      if (prop === 'down') return state.down;
      if (prop === 'applyEvents') {
        return (...args: Parameters<LedgerStore['applyEvents']>) =>
          state.down ? Promise.reject(new Error('connect ECONNREFUSED 10.0.3.7:6379 (the ledger is unreachable)')) : target.applyEvents(...args);
      }
      const value = Reflect.get(target, prop, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
    set(_target, prop, value) {
      if (prop === 'down') {
        state.down = Boolean(value);
        return true;
      }
      return false;
    },
  }) as LedgerStore & { down: boolean };
}

/** Log lines (pino JSON), parsed. */
export function capturedLog(level = 'info') {
  const lines: Record<string, any>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l));
      done();
    },
  });
  return { log: createLogger(level, sink), lines };
}

/** A poison queue that keeps what it is sent, or fails when told to. */
export class KeptPoison implements PoisonQueue {
  readonly description = 'https://sqs.eu-west-1.amazonaws.com/123456789012/glance-quota-enforcer-ci-dead-letters';
  readonly sent: { body: string; reason: string; sourceMessageId: string }[] = [];
  failing = false;
  async send(body: string, reason: string, sourceMessageId: string): Promise<void> {
    if (this.failing) throw new Error('SQS SendMessage: ServiceUnavailable');
    this.sent.push({ body, reason, sourceMessageId });
  }
}

export interface ServicesOptions {
  store: LedgerStore;
  glance: ImageService;
  limits?: LimitSource;
  env?: NodeJS.ProcessEnv;
  poison?: PoisonQueue;
  log?: ReturnType<typeof createLogger>;
  metrics?: MetricsSink;
  /** The pipeline's clock (ms), for tests of budgets. */
  clock?: () => number;
}

/** FunctionServices as `openFunctionServices` builds them (`pipelineOf`, src/composition-root.ts), over the given store, Glance and limits. */
export function servicesOver(o: ServicesOptions): FunctionServices {
  const config = loadConfig(o.env ?? {});
  const log = o.log ?? createLogger('silent');
  const pipeline = pipelineOf({ store: o.store, limits: o.limits ?? ATTACKER_LIMITED, images: o.glance, log, ...(o.clock ? { clock: o.clock } : {}) }, config);
  return {
    config,
    log,
    pipeline,
    ...(o.poison ? { poison: o.poison } : {}),
    ...(o.metrics ? { metrics: o.metrics } : {}),
    close: () => o.store.close(),
  };
}

/** `items` in consecutive slices of `size`. */
export function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/**
 * A fresh shared ledger of `kind` (its own database or key prefix) for each test of the suite
 * this is called in, opened as `store`; the service is held for the whole suite. Another suite
 * may hold the service (or have it stopped, for its outage test) for a while. A service that is
 * down fails every test, with the command that starts it (never a skip).
 */
export function freshLedgerPerTest(kind: 'redis' | 'postgres'): { readonly ledger: TestLedger; readonly store: LedgerStore } {
  let release: () => void = () => {};
  let ledger: TestLedger | undefined;
  let store: LedgerStore | undefined;
  let down: Error | undefined;
  beforeAll(async () => {
    release = await holdService(kind);
    down = await requireService(kind).then(
      () => undefined,
      (err: Error) => err,
    );
  }, 300_000);
  afterAll(() => release());
  beforeEach(async () => {
    if (down) throw down;
    ledger = await freshLedger(kind);
    store = await ledger.open();
  });
  afterEach(async () => {
    await store?.close();
    await ledger?.cleanUp();
    store = undefined;
    ledger = undefined;
  });
  return {
    get ledger() {
      return ledger!;
    },
    get store() {
      return store!;
    },
  };
}
