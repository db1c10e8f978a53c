import { resolveLimits } from '../../src/quota/limits.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { ENV_DEFAULTS, loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { OpenStackUnreachableError } from '../../src/openstack/errors.js';
import { loadCredentials } from '../../src/openstack/credentials.js';
import { findEndpoint, type CatalogService } from '../../src/openstack/catalog.js';
import { KeystoneClient } from '../../src/openstack/keystone.js';
import { keystoneLimitsReader, type KeystoneLimitsReader, type ProjectLimit, type RegisteredLimit } from '../../src/openstack/keystone-limits.js';
import { MAX_PROJECT_READS_KEPT, ON_DEMAND_REFRESH_SECONDS, OUTAGE_RETRY_SECONDS, UnifiedLimits } from '../../src/openstack/limits.js';
import { keystoneProjectNames } from '../../src/openstack/projects.js';
import { keystoneStandIn, projectLimit, registeredLimit, type KeystoneStandIn } from '../support/keystone-standin.js';

const quiet = createLogger('silent');

// What the lab registers for Glance (NOTES.md), in Keystone's shape.
const registered = (name: string, value: number): RegisteredLimit => registeredLimit(name, value);
const LAB_REGISTERED = [
  registered('image_count_total', 100),
  registered('image_size_total', 1000),
  registered('image_stage_total', 1000),
  registered('image_count_uploading', 10),
];

describe('which limit wins', () => {
  const resolve = (input: Partial<Parameters<typeof resolveLimits>[0]>) =>
    resolveLimits({ registered: [], project: [], createRateWindowSeconds: 60, ...input });

  it('takes the project limit over the registered one (the attacker with image_count_total=3)', () => {
    expect(resolve({ registered: LAB_REGISTERED, project: [projectLimit('attacker', 'image_count_total', 3)] })).toEqual({
      image_count_total: 3,
      image_count_uploading: 10,
      image_size_total: 1000,
      image_stage_total: 1000,
    });
  });

  it('takes the registered limit over the static fallback, and the fallback over nothing', () => {
    expect(resolve({ registered: [registered('image_count_total', 100)], fallback: { image_count_total: 5, image_size_total: 50 } })).toEqual({
      image_count_total: 100,
      image_size_total: 50,
    });
  });

  it('reads a negative value as unlimited, at every level', () => {
    expect(
      resolve({
        registered: [registered('image_count_total', 100)],
        project: [projectLimit('p', 'image_count_total', -1)],
        fallback: { image_count_total: 5 },
      }),
    ).toEqual({});
    expect(resolve({ registered: [registered('image_size_total', -1)], fallback: { image_size_total: 5 } })).toEqual({});
    expect(resolve({ fallback: { image_stage_total: -1 } })).toEqual({});
  });

  it('never turns an absent limit into zero, while a real zero stays zero', () => {
    expect(resolve({})).toEqual({});
    expect(resolve({ project: [projectLimit('p', 'image_count_uploading', 0)] })).toEqual({ image_count_uploading: 0 });
  });

  it('gives image_create_rate the configured window, since Keystone stores only the count', () => {
    expect(resolve({ registered: [registered('image_create_rate', 10)], createRateWindowSeconds: 300 })).toEqual({
      image_create_rate: { count: 10, windowSeconds: 300 },
    });
    expect(resolve({ fallback: { image_create_rate: { count: 4, windowSeconds: 30 } } })).toEqual({ image_create_rate: { count: 4, windowSeconds: 30 } });
  });

  it("ignores names that are not Glance's resources", () => {
    expect(resolve({ registered: [registered('cores', 20), registered('image_count_totl', 1)] })).toEqual({});
  });
});

describe('settings', () => {
  it('documents the window default, and takes both settings from the one environment schema', () => {
    expect(ENV_DEFAULTS.QUOTA_CREATE_RATE_WINDOW).toBe(60);
    expect(loadConfig({})).toMatchObject({ createRateWindowSeconds: 60, limitsCacheSeconds: 60 });
    expect(loadConfig({ QUOTA_CREATE_RATE_WINDOW: '3600', LIMITS_CACHE_SECONDS: '0' })).toMatchObject({ createRateWindowSeconds: 3600, limitsCacheSeconds: 0 });
  });

  it('names the variable and the fix', () => {
    expect(() => loadConfig({ QUOTA_CREATE_RATE_WINDOW: '1m' })).toThrow(/QUOTA_CREATE_RATE_WINDOW: .*got '1m'; for example QUOTA_CREATE_RATE_WINDOW=60/);
    expect(() => loadConfig({ LIMITS_CACHE_SECONDS: '-5' })).toThrow(/LIMITS_CACHE_SECONDS: .*got '-5'; for example LIMITS_CACHE_SECONDS=60/);
  });
});

function fakeSource() {
  const state = {
    registered: [...LAB_REGISTERED],
    project: new Map<string, ProjectLimit[]>(),
    down: false,
    truncated: false,
    calls: { registered: 0, all: 0, project: 0 },
  };
  const unreachable = (path: string) =>
    new OpenStackUnreachableError('keystone', 'GET', `http://keystone/v3${path}`, 4, `keystone: GET http://keystone/v3${path} got no answer after 4 attempts`);
  const source: KeystoneLimitsReader = {
    async registeredLimits() {
      state.calls.registered++;
      if (state.down) throw unreachable('/registered_limits');
      return state.registered;
    },
    async allProjectLimits() {
      state.calls.all++;
      if (state.down) throw unreachable('/limits');
      const limits = [...state.project.values()].flat();
      return { limits: state.truncated ? limits.slice(0, 1) : limits, truncated: state.truncated };
    },
    async projectLimits(projectId) {
      state.calls.project++;
      if (state.down) throw unreachable('/limits');
      return state.project.get(projectId) ?? [];
    },
  };
  return { source, state };
}

describe('the limits table', () => {
  it('reads every project with two Keystone calls per LIMITS_CACHE_SECONDS', async () => {
    const { source, state } = fakeSource();
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 3)]);
    let now = 1_000_000;
    const limits = new UnifiedLimits(source, { cacheSeconds: 60, now: () => now, log: quiet });
    expect(await limits.limitsFor('attacker')).toMatchObject({ image_count_total: 3 });
    expect(await limits.limitsFor('demo')).toMatchObject({ image_count_total: 100 });
    for (let i = 0; i < 500; i++) await limits.limitsFor(`project-${i}`);
    now += 59_000;
    await limits.limitsFor('attacker');
    expect(state.calls).toEqual({ registered: 1, all: 1, project: 0 });
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 7)]);
    now += 2_000;
    expect(await limits.lookup('attacker')).toEqual({ limits: expect.objectContaining({ image_count_total: 7 }), origin: 'keystone', fetchedAt: now });
    expect(state.calls).toEqual({ registered: 2, all: 2, project: 0 });
  });

  it('makes concurrent lookups of many projects share one Keystone round', async () => {
    const { source, state } = fakeSource();
    const limits = new UnifiedLimits(source, { log: quiet });
    await Promise.all([limits.limitsFor('demo'), limits.limitsFor('demo'), limits.limitsFor('attacker'), limits.limitsFor('other')]);
    expect(state.calls).toEqual({ registered: 1, all: 1, project: 0 });
  });

  it('re-reads Keystone when a project is over, so a limit lowered a minute ago acts at once, at most once per few seconds', async () => {
    const { source, state } = fakeSource();
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 10)]);
    let now = 1_000_000;
    const limits = new UnifiedLimits(source, { cacheSeconds: 60, refreshSeconds: ON_DEMAND_REFRESH_SECONDS, now: () => now, log: quiet });
    await limits.limitsFor('attacker');
    // The operator lowers the attacker's limit; the table read a moment ago still says 10.
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 2)]);
    now += ON_DEMAND_REFRESH_SECONDS * 1000;
    expect(await limits.limitsFor('attacker')).toMatchObject({ image_count_total: 10 });
    expect(await limits.refresh('attacker')).toMatchObject({ image_count_total: 2 });
    expect(await limits.limitsFor('attacker')).toMatchObject({ image_count_total: 2 });
    expect(state.calls.all).toBe(2);

    // A flood puts a hundred projects over at once: one read answers them all.
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 50)]);
    now += ON_DEMAND_REFRESH_SECONDS * 1000;
    const burst = await Promise.all(Array.from({ length: 100 }, (_, i) => limits.refresh(i === 0 ? 'attacker' : `project-${i}`)));
    expect(burst[0]).toMatchObject({ image_count_total: 50 });
    expect(state.calls.all).toBe(3);
    // Within the next few seconds, the table just read answers.
    now += (ON_DEMAND_REFRESH_SECONDS - 1) * 1000;
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 1)]);
    expect(await limits.refresh('attacker')).toMatchObject({ image_count_total: 50 });
    expect(state.calls).toEqual({ registered: 3, all: 3, project: 0 });
  });

  it('keeps the last known limits in force while Keystone is down, logs and counts each failed read once, not per project', async () => {
    const { source, state } = fakeSource();
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 3)]);
    let now = 1_000_000;
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const limits = new UnifiedLimits(source, { cacheSeconds: 60, now: () => now, log: createLogger('info', sink) });
    const fetchedAt = now;
    await limits.limitsFor('attacker');

    state.down = true;
    now += 61_000;
    expect(await limits.lookup('attacker')).toEqual({ limits: expect.objectContaining({ image_count_total: 3 }), origin: 'last-known', fetchedAt });
    expect(await limits.lookup('demo')).toEqual({ limits: expect.objectContaining({ image_count_total: 100 }), origin: 'last-known', fetchedAt });
    expect(await limits.refresh('attacker')).toMatchObject({ image_count_total: 3 });
    expect(limits.failures).toBe(1);
    expect(lines.join('')).toContain('the last known limits stay in force');

    // Within the outage retry period nobody waits on a dead Keystone again, not even an over project.
    now += (OUTAGE_RETRY_SECONDS - 1) * 1000;
    expect(OUTAGE_RETRY_SECONDS - 1).toBeGreaterThan(ON_DEMAND_REFRESH_SECONDS);
    await limits.limitsFor('attacker');
    await limits.refresh('attacker');
    expect(limits.failures).toBe(1);
    now += 2_000;
    await limits.limitsFor('attacker');
    expect(limits.failures).toBe(2);

    state.down = false;
    now += OUTAGE_RETRY_SECONDS * 1000;
    expect((await limits.lookup('attacker')).origin).toBe('keystone');
  });

  it('before the first read, falls back to the static limits, never to zero; a project Keystone does not list gets the registered ones', async () => {
    const { source, state } = fakeSource();
    const staticLimits = new StaticLimits({ image_count_total: 50, image_create_rate: { count: 20, windowSeconds: 60 } });
    state.down = true;
    const cold = new UnifiedLimits(source, { fallback: staticLimits, log: quiet });
    expect(await cold.lookup('demo')).toEqual({ limits: { image_count_total: 50, image_create_rate: { count: 20, windowSeconds: 60 } }, origin: 'fallback' });
    const bare = new UnifiedLimits(source, { log: quiet });
    expect(await bare.limitsFor('demo')).toEqual({});
    expect(cold.failures + bare.failures).toBe(2);

    state.down = false;
    const warm = new UnifiedLimits(source, { fallback: staticLimits, log: quiet });
    expect(await warm.lookup('newcomer')).toEqual({
      limits: {
        image_count_total: 100,
        image_count_uploading: 10,
        image_size_total: 1000,
        image_stage_total: 1000,
        image_create_rate: { count: 20, windowSeconds: 60 },
      },
      origin: 'keystone',
      fetchedAt: expect.any(Number),
    });
  });

  it('trusts for an act only limits Keystone itself just gave: not the static fallback, not a table the latest read could not renew', async () => {
    const { source, state } = fakeSource();
    let now = 1_000_000;
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 3)]);
    const limits = new UnifiedLimits(source, {
      fallback: new StaticLimits({ image_count_total: 5 }),
      cacheSeconds: 60,
      refreshSeconds: 1,
      now: () => now,
      log: quiet,
    });
    state.down = true;
    // A cold start during an outage: the static 5 is in hand, and is not acted on.
    expect(await limits.confirm('attacker')).toMatchObject({
      trusted: false,
      limits: { image_count_total: 5 },
      reason: expect.stringMatching(/could not be read yet.*not a stand-in/),
    });
    state.down = false;
    now += OUTAGE_RETRY_SECONDS * 1000;
    expect(await limits.confirm('attacker')).toMatchObject({ trusted: true, limits: { image_count_total: 3 } });
    // Keystone blips: the table it gave a moment ago (within LIMITS_CACHE_SECONDS) still acts.
    state.down = true;
    now += 2_000;
    expect(await limits.confirm('attacker')).toMatchObject({ trusted: true, limits: { image_count_total: 3 } });
    // The outage outlasts LIMITS_CACHE_SECONDS: that table is reported, not acted on.
    now += 61_000;
    expect(await limits.confirm('attacker')).toMatchObject({
      trusted: false,
      limits: { image_count_total: 3 },
      reason: expect.stringMatching(/latest reads .* failed.*older than LIMITS_CACHE_SECONDS \(60\)/),
    });
    expect(limits.status().trusted).toBe(false);
    state.down = false;
    now += OUTAGE_RETRY_SECONDS * 1000;
    expect((await limits.confirm('attacker')).trusted).toBe(true);
  });

  it('reads projects one by one, and keeps a bounded number, only while Keystone truncates the listing', async () => {
    const { source, state } = fakeSource();
    state.truncated = true;
    state.project.set('a', [projectLimit('a', 'image_count_total', 1)]);
    state.project.set('b', [projectLimit('b', 'image_count_total', 2), projectLimit('b', 'image_size_total', 20)]);
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const limits = new UnifiedLimits(source, { log: createLogger('info', sink) });
    expect(await limits.limitsFor('b')).toMatchObject({ image_count_total: 2, image_size_total: 20 });
    expect(await limits.limitsFor('b')).toMatchObject({ image_count_total: 2 });
    expect(state.calls).toEqual({ registered: 1, all: 1, project: 1 });
    expect(lines.join('')).toContain('[unified_limit] list_limit');
    for (let i = 0; i < MAX_PROJECT_READS_KEPT + 5; i++) await limits.limitsFor(`p-${i}`);
    // The oldest answers were dropped: 'b' is read again.
    await limits.limitsFor('b');
    expect(state.calls.project).toBe(MAX_PROJECT_READS_KEPT + 7);
  });
});

describe('against a counting Keystone stand-in (HTTP on 127.0.0.1)', () => {
  const stands: KeystoneStandIn[] = [];
  afterAll(async () => {
    for (const s of stands) await s.close();
  });
  const fast = { attempts: 2, baseDelayMs: 1, maxDelayMs: 1, timeoutMs: 5_000 };

  async function standIn(projects: number, init: Parameters<typeof keystoneStandIn>[0] = {}) {
    const s = await keystoneStandIn({
      registered: [...LAB_REGISTERED.map((l) => registeredLimit(l.resource_name, l.default_limit)), registeredLimit('image_count_total', 7, 'RegionTwo')],
      limits: Array.from({ length: projects }, (_, i) => projectLimit(`p-${i}`, 'image_count_total', 1_000 + i)),
      ...init,
    });
    stands.push(s);
    const keystone = new KeystoneClient(loadCredentials(s.env, { searchDirs: [] }), { log: quiet, retry: fast, sleep: async () => {} });
    return { s, keystone };
  }

  it('costs the same Keystone calls per refresh for 10 and for 10,000 projects', async () => {
    const perRefresh: Record<number, unknown> = {};
    for (const projects of [10, 10_000]) {
      const { s, keystone } = await standIn(projects);
      let now = 1_000_000;
      const limits = new UnifiedLimits(keystoneLimitsReader(keystone, { log: quiet }), { cacheSeconds: 60, now: () => now, log: quiet });
      for (let i = 0; i < projects; i++) expect((await limits.limitsFor(`p-${i}`)).image_count_total).toBe(1_000 + i);
      now += 61_000;
      s.resetCalls();
      for (let i = 0; i < projects; i++) await limits.limitsFor(`p-${i}`);
      await limits.refresh(`p-${projects - 1}`);
      perRefresh[projects] = { ...s.calls };
    }
    expect(perRefresh[10]).toEqual({ tokens: 0, registeredLimits: 1, limits: 1, limitsOfOneProject: 0 });
    expect(perRefresh[10_000]).toEqual(perRefresh[10]);
  });

  it("applies project > registered > static, for the enforcer's region only", async () => {
    const { s, keystone } = await standIn(0, {
      limits: [
        projectLimit('attacker', 'image_count_total', 3),
        projectLimit('attacker', 'image_count_total', 1, 'RegionTwo'),
        projectLimit('demo', 'image_size_total', -1),
      ],
    });
    const limits = new UnifiedLimits(keystoneLimitsReader(keystone, { log: quiet }), {
      fallback: new StaticLimits({ image_count_total: 50, image_create_rate: { count: 5, windowSeconds: 60 } }),
      log: quiet,
    });
    expect(await limits.limitsFor('attacker')).toEqual({
      image_count_total: 3,
      image_count_uploading: 10,
      image_size_total: 1000,
      image_stage_total: 1000,
      image_create_rate: { count: 5, windowSeconds: 60 },
    });
    expect(await limits.limitsFor('demo')).toEqual({
      image_count_total: 100,
      image_count_uploading: 10,
      image_stage_total: 1000,
      image_create_rate: { count: 5, windowSeconds: 60 },
    });
    expect(s.calls).toEqual({ tokens: 1, registeredLimits: 1, limits: 1, limitsOfOneProject: 0 });

    // The same Keystone seen from RegionTwo: its own registered and project limits.
    const two = new KeystoneClient(loadCredentials({ ...s.env, OS_REGION_NAME: 'RegionTwo' }, { searchDirs: [] }), {
      log: quiet,
      retry: fast,
      sleep: async () => {},
    });
    expect(await new UnifiedLimits(keystoneLimitsReader(two, { log: quiet }), { log: quiet }).limitsFor('attacker')).toEqual({ image_count_total: 1 });
    expect(await new UnifiedLimits(keystoneLimitsReader(two, { log: quiet }), { log: quiet }).limitsFor('demo')).toEqual({ image_count_total: 7 });
  });

  it('keeps the table while Keystone answers 503, and the static limits before the first answer', async () => {
    const { s, keystone } = await standIn(3);
    let now = 1_000_000;
    const limits = new UnifiedLimits(keystoneLimitsReader(keystone, { log: quiet }), {
      cacheSeconds: 60,
      now: () => now,
      fallback: new StaticLimits({ image_count_total: 50 }),
      log: quiet,
    });
    s.down = true;
    expect(await limits.lookup('p-1')).toEqual({ limits: { image_count_total: 50 }, origin: 'fallback' });
    s.down = false;
    now += OUTAGE_RETRY_SECONDS * 1000;
    expect(await limits.lookup('p-1')).toMatchObject({ limits: { image_count_total: 1_001 }, origin: 'keystone' });
    s.down = true;
    now += 61_000;
    expect(await limits.lookup('p-1')).toMatchObject({ limits: { image_count_total: 1_001 }, origin: 'last-known' });
    expect(limits.failures).toBe(2);
  });

  it("follows a paginating Keystone's next links, but never sends the token to another host", async () => {
    const { s, keystone } = await standIn(25);
    s.pageSize = 10;
    const source = keystoneLimitsReader(keystone, { log: quiet });
    const listing = await source.allProjectLimits();
    expect(listing.limits.map((l) => l.project_id)).toEqual(Array.from({ length: 25 }, (_, i) => `p-${i}`));
    expect(s.calls.limits).toBe(3);
    s.nextBase = 'http://elsewhere.example:5000';
    await expect(source.allProjectLimits()).rejects.toThrow(
      /next page of \/limits\?service_id=svc-image&region_id=RegionOne is at http:\/\/elsewhere.example:5000\/v3\/limits.*outside OS_AUTH_URL.*not sending the token there/,
    );
  });

  it('reads a truncated listing (list_limit) as partial, and each project on its own', async () => {
    const { s, keystone } = await standIn(50, { listLimit: 10 });
    const limits = new UnifiedLimits(keystoneLimitsReader(keystone, { log: quiet }), { log: quiet });
    expect(await limits.limitsFor('p-42')).toMatchObject({ image_count_total: 1_042 });
    expect(s.calls).toMatchObject({ registeredLimits: 1, limits: 1, limitsOfOneProject: 1 });
  });

  it("names projects from one listing of Keystone's projects, and reads one by one those a truncated listing left out", async () => {
    const projects = Array.from({ length: 30 }, (_, i) => ({ id: `p-${i}`, name: `project ${i}` }));
    const { s, keystone } = await standIn(0, { projects, listLimit: 20 });
    const wanted = ['p-1', 'p-25', 'p-29', 'p-2', 'p-3', 'p-4', 'gone'];
    const names = await keystoneProjectNames(keystone).namesOf(wanted);
    expect(Object.fromEntries(names)).toEqual({
      'p-1': 'project 1',
      'p-25': 'project 25',
      'p-29': 'project 29',
      'p-2': 'project 2',
      'p-3': 'project 3',
      'p-4': 'project 4',
    });
    // One listing (cut at 20), then p-25, p-29 and 'gone' (Keystone: 404) by id.
    expect(s.projectCalls).toEqual({ listings: 1, byId: 3 });
  });
});

describe('the catalog', () => {
  const catalog: CatalogService[] = [
    { id: 'svc-keystone', type: 'identity', endpoints: [{ id: 'k', interface: 'public', region_id: 'RegionOne', url: 'http://k:5000/v3' }] },
    {
      id: 'svc-image',
      type: 'image',
      name: 'glance',
      endpoints: [
        { id: 'a', interface: 'public', region_id: 'RegionOne', url: 'https://glance-one:9292/' },
        { id: 'b', interface: 'public', region_id: 'RegionTwo', url: 'https://glance-two:9292' },
      ],
    },
  ];

  it('gives the endpoint, its service id (for limits) and its region', () => {
    expect(findEndpoint(catalog, 'image', 'public', 'RegionTwo')).toEqual({ url: 'https://glance-two:9292', serviceId: 'svc-image', regionId: 'RegionTwo' });
  });

  it('refuses to guess between regions', () => {
    expect(() => findEndpoint(catalog, 'image', 'public')).toThrow(
      "catalog: 'image' endpoints with interface 'public' exist in regions RegionOne, RegionTwo; set OS_REGION_NAME to the one to enforce",
    );
  });

  it('says when there is no image service at all', () => {
    expect(() => findEndpoint(catalog.slice(0, 1), 'image', 'public')).toThrow(
      "catalog: no 'image' endpoint with interface 'public'; the catalog has no 'image' service at all: register it in Keystone (openstack service create image), or set GLANCE_URL",
    );
  });
});
