import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { pipelineOf } from '../../src/composition-root.js';
import { AdmissionGate, type AdmissionOptions } from '../../src/doors/admission.js';
import { startAdmissionServer } from '../../src/doors/admission-http.js';
import type { SubjectToken } from '../../src/openstack/keystone.js';
import { TokenProjects } from '../../src/openstack/token-projects.js';
import { glanceOverLimitBody, glanceOverLimitMessage, routeOf } from '../../src/quota/admission.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { MemoryGlance } from '../functions/support.js';
import { envelope, inner, rawBody } from '../support/fixtures.js';

const P = 'a3b1c2d4e5f60718293a4b5c6d7e8f90';
const NOW = Date.UTC(2026, 11, 1, 12);
const TOKEN = 'gAAAAABpY0-user-token-of-the-tenant';

/** An image.create for project `owner`, as Glance 25 sends it (the lab's capture, re-addressed). */
function createBody(owner: string, imageId = randomUUID(), atSeconds = NOW / 1000 - 1): string {
  const m = inner(rawBody('image.create'));
  const iso = new Date(atSeconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
  m.message_id = randomUUID();
  m.timestamp = iso.replace('T', ' ').replace('Z', '.000000');
  m.payload = { ...m.payload, id: imageId, owner, status: 'queued', created_at: iso, updated_at: iso };
  return envelope(m);
}

function gateOver(store: LedgerStore, limits: string, extra: Partial<AdmissionOptions> = {}) {
  const lookups: string[] = [];
  const gate = new AdmissionGate({
    ledger: store,
    limits: new StaticLimits(
      Object.fromEntries(
        limits
          .split(',')
          .map((kv) => kv.split('='))
          .map(([k, v]) => [k, Number(v)]),
      ),
    ),
    tokenOwner: async (t) => {
      lookups.push(t);
      return t === TOKEN ? { projectId: P, expiresAtMs: NOW + 3_600_000 } : undefined;
    },
    clock: () => NOW,
    ...extra,
  });
  return { gate, lookups };
}

const create = { method: 'POST', uri: '/v2/images', token: TOKEN };

describe('which requests are creates', () => {
  it.each([
    ['POST', '/v2/images'],
    ['POST', '//v2/images'],
    ['POST', '/v2//images'],
    ['POST', '/v2/images?x=1'],
    ['POST', '/v2/%69mages'],
    ['POST', '/%2Fv2/images'],
    ['POST', '/v2/images#top'],
    ['post', '/v2/images'],
    ['POST', 'http://glance.example.com:9292/v2/images'],
    ['POST', '/v1/images'],
  ])('%s %s is a create (Glance 25 takes the percent-encoded and slashed forms as one)', (method, uri) => {
    expect(routeOf(method, uri)).toEqual({ kind: 'image-create', resource: 'image_count_total', delta: 1 });
  });

  it.each([
    ['GET', '/v2/images'],
    ['POST', '/v2/images/'],
    ['POST', '/V2/images'],
    ['POST', '/v2/%2569mages'],
    ['POST', '/v2/images/0b5a2b0e-1b1b-4c0b-9a4e-3f1e2d3c4b5a/members'],
    ['PUT', '/v2/images/0b5a2b0e-1b1b-4c0b-9a4e-3f1e2d3c4b5a/file'],
    ['POST', '/v2/images/0b5a2b0e-1b1b-4c0b-9a4e-3f1e2d3c4b5a/import'],
    ['DELETE', '/v2/images'],
  ])('%s %s is not (Glance answers 404, 300 or 405 to the path, or it is another call)', (method, uri) => {
    expect(routeOf(method, uri)).toBeUndefined();
  });
});

describe("Glance's own words", () => {
  it('are the message and JSON body Glance 25 sent with its 413 on the lab (unified limits on)', () => {
    const message = glanceOverLimitMessage('81566b2f2198430fbd7aa2d6c0954a76', 'image_count_total', 3, 3);
    expect(message).toBe(
      'Project 81566b2f2198430fbd7aa2d6c0954a76 is over a limit for [Resource image_count_total is over limit of 3 due to current usage 3 and delta 1]',
    );
    // Captured: /work/shared/lab/samples/glance-quota-exceeded.txt, "Accept: application/json".
    const captured =
      '{"message": "The request returned a 413 Request Entity Too Large. This generally means that rate limiting or a quota threshold was breached.\\n\\nThe response body:\\nProject 81566b2f2198430fbd7aa2d6c0954a76 is over a limit for [Resource image_count_total is over limit of 3 due to current usage 3 and delta 1]<br /><br />\\n\\n\\n", "code": "413 Request Entity Too Large", "title": "Request Entity Too Large"}';
    expect(JSON.parse(glanceOverLimitBody(message))).toEqual(JSON.parse(captured));
  });
});

describe('the admission door', () => {
  it("admits exactly 5 of 60 parallel creates against 0 of 5, refusing the rest in Glance's words without asking Glance", async () => {
    let confirmations = 0;
    const { gate } = gateOver(new MemoryStore(), 'image_count_total=5', {
      confirmOnGlance: async () => {
        confirmations++;
        return 0;
      },
    });
    const answers = await Promise.all(Array.from({ length: 60 }, () => gate.decide(create)));
    expect(answers.filter((a) => a.decision === 'allow')).toHaveLength(5);
    const refused = answers.filter((a) => a.decision === 'deny');
    expect(refused).toHaveLength(55);
    expect(refused[0]).toMatchObject({ reason: 'over-limit', projectId: P, over: { resource: 'image_count_total', limit: 5, usage: 5 } });
    expect(refused[0]!.over!.message).toBe(
      `Project ${P} is over a limit for [Resource image_count_total is over limit of 5 due to current usage 5 and delta 1]`,
    );
    // The endpoint's own reservations fill the limit: no forged message can cause that.
    expect(confirmations).toBe(0);
  });

  it("ends a reservation with the project's next image.create from the bus, so the count takes over", async () => {
    const store = new MemoryStore();
    const pipeline = pipelineOf({ store, limits: new StaticLimits({}), clock: () => NOW });
    const { gate } = gateOver(store, 'image_count_total=2');
    expect((await gate.decide(create)).decision).toBe('allow');
    expect((await gate.decide(create)).decision).toBe('allow');
    expect((await gate.decide(create)).decision).toBe('deny');
    const body = createBody(P);
    await pipeline.ingest([body, body]); // a redelivery ends nothing more
    expect(await store.reserveCreate(P, {}, NOW, NOW + 1)).toEqual({ admitted: true, count: 1, reserved: 1 });
  });

  it('lets a create through again once a reservation passes ADMISSION_RESERVATION_SECONDS without its image.create', async () => {
    let now = NOW;
    const { gate } = gateOver(new MemoryStore(), 'image_count_total=1', { clock: () => now, reservationMs: 30_000 });
    expect((await gate.decide(create)).decision).toBe('allow');
    now += 29_999;
    expect((await gate.decide(create)).decision).toBe('deny');
    now += 1;
    expect((await gate.decide(create)).decision).toBe('allow');
  });

  it('does not look at anything but creates, and leaves a missing or unknown token to Glance', async () => {
    const { gate, lookups } = gateOver(new MemoryStore(), 'image_count_total=0');
    expect(await gate.decide({ method: 'GET', uri: '/v2/images', token: TOKEN })).toEqual({ decision: 'allow', reason: 'not-a-create' });
    expect(await gate.decide({ method: 'PUT', uri: '/v2/images/x/file', token: TOKEN })).toEqual({ decision: 'allow', reason: 'not-a-create' });
    expect(lookups).toEqual([]);
    expect(await gate.decide({ ...create, token: undefined })).toEqual({ decision: 'allow', reason: 'no-token' });
    expect(await gate.decide({ ...create, token: 'made-up' })).toEqual({ decision: 'allow', reason: 'unknown-token' });
    expect((await gate.decide(create)).decision).toBe('deny');
  });

  it('holds the create rate from the ledger: creates in the window plus reservations', async () => {
    const store = new MemoryStore();
    const pipeline = pipelineOf({ store, limits: new StaticLimits({}), clock: () => NOW });
    await pipeline.ingest([createBody(P, randomUUID(), NOW / 1000 - 10), createBody(P, randomUUID(), NOW / 1000 - 120)]);
    const gate = new AdmissionGate({
      ledger: store,
      limits: new StaticLimits({ image_create_rate: { count: 3, windowSeconds: 60 } }),
      tokenOwner: async () => ({ projectId: P, expiresAtMs: NOW + 60_000 }),
      clock: () => NOW,
    });
    // One create in the last 60 s (the other is 120 s old): two more fit.
    expect((await gate.decide(create)).decision).toBe('allow');
    expect((await gate.decide(create)).decision).toBe('allow');
    expect(await gate.decide(create)).toMatchObject({ decision: 'deny', over: { resource: 'image_create_rate', limit: 3, usage: 3 } });
  });

  it('counts a limit raised a moment ago: the confirmation re-reads the limits at the source', async () => {
    const store = new MemoryStore();
    await pipelineOf({ store, limits: new StaticLimits({}), clock: () => NOW }).ingest([createBody(P)]);
    let keystone = 1;
    let table = 1;
    const limits = {
      limitsFor: async () => ({ image_count_total: table }),
      refresh: async () => {
        table = keystone;
        return { image_count_total: table };
      },
    };
    const gate = new AdmissionGate({
      ledger: store,
      limits,
      clock: () => NOW,
      tokenOwner: async () => ({ projectId: P, expiresAtMs: NOW + 60_000 }),
      // As Pipeline.enforceOnGlance does: the limits afresh, then Glance's count.
      confirmOnGlance: async (p) => {
        await limits.refresh();
        return (await store.usage(p)).image_count_total;
      },
      confirmMs: 0,
    });
    expect(await gate.decide(create)).toMatchObject({ decision: 'deny', over: { limit: 1, usage: 1 } });
    keystone = 3;
    expect(await gate.decide(create)).toMatchObject({ decision: 'allow', reason: 'ledger-corrected' });
  });

  it('allows exempt projects, unlimited ones, and in dry-run reports the refusal it would make', async () => {
    const exempt = gateOver(new MemoryStore(), 'image_count_total=0', { exemptProjects: new Set([P]) }).gate;
    expect(await exempt.decide(create)).toMatchObject({ decision: 'allow', reason: 'exempt' });
    const unlimited = gateOver(new MemoryStore(), 'image_count_total=-1').gate;
    expect(await unlimited.decide(create)).toMatchObject({ decision: 'allow', reason: 'unlimited' });
    const dry = gateOver(new MemoryStore(), 'image_count_total=0', { mode: 'dry-run' }).gate;
    expect(await dry.decide(create)).toMatchObject({ decision: 'allow', reason: 'dry-run', over: { limit: 0, usage: 0 } });
  });

  it('fails open on a store error or a timeout, and closed with ADMISSION_FAIL=closed; each answer is counted', async () => {
    const broken = new MemoryStore();
    broken.reserveCreate = () => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:6379'));
    const seen: string[] = [];
    const onAnswer: AdmissionOptions['onAnswer'] = (a, seconds) => void seen.push(`${a.decision}/${a.reason}/${seconds >= 0}`);
    expect(await gateOver(broken, 'image_count_total=5', { onAnswer }).gate.decide(create)).toEqual({ decision: 'allow', reason: 'error' });
    expect(await gateOver(broken, 'image_count_total=5', { failClosed: true }).gate.decide(create)).toEqual({ decision: 'deny', reason: 'error' });
    const slow = new AdmissionGate({
      ledger: new MemoryStore(),
      limits: new StaticLimits({}),
      tokenOwner: () => new Promise(() => {}),
      timeoutMs: 50,
      onAnswer,
    });
    const started = Date.now();
    expect(await slow.decide(create)).toEqual({ decision: 'allow', reason: 'timeout' });
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(seen).toEqual(['allow/error/true', 'allow/timeout/true']);
  });
});

describe('a forged image.create for a project at its limit', () => {
  /**
   * The project has 2 real images in Glance and a limit of 3; the bus says it has 3: one forged,
   * dated a minute ahead (within CLOCK_SKEW_SECONDS), so that the repair from Glance's listing
   * spares it as news newer than the listing. Glance's count must decide all the same.
   */
  async function forgedAtLimit(clock: () => number) {
    const store = new MemoryStore();
    const glance = new MemoryGlance();
    const pipeline = pipelineOf({ store, limits: new StaticLimits({ image_count_total: 3 }), images: glance, clock });
    const real = [randomUUID(), randomUUID()];
    for (const id of real) {
      const at = new Date(NOW - 60_000).toISOString().replace(/\.\d+Z$/, 'Z');
      glance.add({ id, owner: P, status: 'queued', protected: false, size: null, created_at: at, updated_at: at, visibility: 'private' });
    }
    await pipeline.ingest([...real.map((id) => createBody(P, id, NOW / 1000 - 60)), createBody(P, randomUUID(), NOW / 1000 + 60)]);
    const { gate } = gateOver(store, 'image_count_total=3', {
      clock,
      confirmOnGlance: async (p) => (await pipeline.enforceOnGlance(p)).usage.image_count_total,
      confirmMs: 5_000,
    });
    return { store, glance, pipeline, gate };
  }

  it("does not refuse its owner's create: Glance's listing is asked once for a burst, and corrects the ledger", async () => {
    const { gate, glance, store } = await forgedAtLimit(() => NOW);
    const answers = await Promise.all([gate.decide(create), gate.decide(create), gate.decide(create)]);
    // Glance counts 2 of 3: one more fits, the other two are refused (by the reservation).
    expect(answers.map((a) => a.reason).sort()).toEqual(['ledger-corrected', 'over-limit', 'over-limit']);
    expect(glance.calls.filter((c) => c.startsWith('LIST'))).toEqual([`LIST ${P}`]);
    // The repair left the forged record for the next listing: the ledger still says 3.
    expect((await store.usage(P)).image_count_total).toBe(3);
  });

  it('blocks for at most ADMISSION_CONFIRM_SECONDS when forging goes on after a confirmation', async () => {
    let now = NOW;
    const { gate, glance, pipeline } = await forgedAtLimit(() => now);
    expect((await gate.decide(create)).reason).toBe('ledger-corrected');
    // The admitted create arrives on the bus and Glance lists it; then one more forged create.
    const admitted = randomUUID();
    const at = new Date(now).toISOString().replace(/\.\d+Z$/, 'Z');
    glance.add({ id: admitted, owner: P, status: 'queued', protected: false, size: null, created_at: at, updated_at: at, visibility: 'private' });
    await pipeline.ingest([createBody(P, admitted, now / 1000), createBody(P, randomUUID(), now / 1000)]);
    // The owner deletes one real image (Glance has 2 of 3 again); the ledger, forged, says 3.
    const [gone] = [...glance.images.keys()].filter((id) => id !== admitted);
    glance.images.delete(gone!);
    now += 1_000;
    expect((await gate.decide(create)).reason).toBe('over-limit');
    now += 4_000;
    expect((await gate.decide(create)).reason).toBe('ledger-corrected');
  });
});

describe('token -> project', () => {
  it('keys the cache by SHA-256, merges concurrent misses, and keeps a project until min(5 minutes, expiry)', async () => {
    let now = NOW;
    const calls: string[] = [];
    let answer: SubjectToken | undefined = { projectId: P, expiresAtMs: NOW + 120_000 };
    const tokens = new TokenProjects(
      async (t) => {
        calls.push(t);
        await new Promise((r) => setTimeout(r, 5));
        return answer;
      },
      { now: () => now },
    );
    const results = await Promise.all(Array.from({ length: 20 }, () => tokens.lookup(TOKEN)));
    expect(results.every((r) => r?.projectId === P)).toBe(true);
    expect(calls).toHaveLength(1);
    expect(JSON.stringify([...(tokens as unknown as { entries: Map<string, unknown> }).entries.keys()])).not.toContain(TOKEN);
    now += 119_999;
    await tokens.lookup(TOKEN);
    expect(calls).toHaveLength(1);
    now += 1; // the token's own expiry, before 5 minutes
    answer = undefined;
    expect(await tokens.lookup(TOKEN)).toBeUndefined();
    expect(calls).toHaveLength(2);
    expect(tokens.hits).toBe(20);
  });

  it('is bounded, forgetting the least recently used first', async () => {
    const calls: string[] = [];
    const tokens = new TokenProjects(
      async (t) => {
        calls.push(t);
        return { projectId: t, expiresAtMs: Date.now() + 3_600_000 };
      },
      { maxEntries: 2 },
    );
    await tokens.lookup('a');
    await tokens.lookup('b');
    await tokens.lookup('a');
    await tokens.lookup('c');
    expect(tokens.size).toBe(2);
    await tokens.lookup('a');
    await tokens.lookup('b');
    expect(calls).toEqual(['a', 'b', 'c', 'b']);
  });
});

describe('the HTTP contract', () => {
  it("answers 200 empty, 403 with X-Quota-* headers, or 413 with Glance's body; from X-Original-* or its own request line", async () => {
    const { gate } = gateOver(new MemoryStore(), 'image_count_total=1');
    const { server, port } = await startAdmissionServer(gate, { port: 0, host: '127.0.0.1' });
    try {
      const url = `http://127.0.0.1:${port}/admission/v1/image-create`;
      const ask = (headers: Record<string, string>, path = '', method = 'GET') => fetch(url + path, { method, headers });
      const first = await ask({ 'x-original-method': 'POST', 'x-original-uri': '//v2/images', 'x-auth-token': TOKEN });
      expect(first.status).toBe(200);
      expect(await first.text()).toBe('');
      const denied = await ask({ 'x-original-method': 'POST', 'x-original-uri': '/v2//images?x=1', 'x-auth-token': TOKEN });
      expect(denied.status).toBe(403);
      expect(denied.headers.get('x-quota-message')).toBe(
        `Project ${P} is over a limit for [Resource image_count_total is over limit of 1 due to current usage 1 and delta 1]`,
      );
      expect(Object.fromEntries(['x-quota-resource', 'x-quota-limit', 'x-quota-usage', 'x-quota-project'].map((h) => [h, denied.headers.get(h)]))).toEqual({
        'x-quota-resource': 'image_count_total',
        'x-quota-limit': '1',
        'x-quota-usage': '1',
        'x-quota-project': P,
      });
      const as413 = await ask({ 'x-original-method': 'POST', 'x-original-uri': '/v2/images', 'x-auth-token': TOKEN }, '?deny_status=413');
      expect(as413.status).toBe(413);
      expect(((await as413.json()) as { code: string }).code).toBe('413 Request Entity Too Large');
      // Envoy's ext_authz: the original method, and the original path after the prefix.
      const envoy = await ask({ 'x-auth-token': TOKEN, 'x-quota-deny-status': '413' }, '/v2/images', 'POST');
      expect(envoy.status).toBe(413);
      expect(((await envoy.json()) as { message: string }).message).toContain(`Project ${P} is over a limit`);
      expect((await ask({ 'x-auth-token': TOKEN }, '/v2/images', 'GET')).status).toBe(200);
      expect((await fetch(`http://127.0.0.1:${port}/other`)).status).toBe(404);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
