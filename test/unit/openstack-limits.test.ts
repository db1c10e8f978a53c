import { StaticLimits } from '../../src/quota/static-limits.js';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { OpenStackUnreachableError } from '../../src/openstack/errors.js';
import { findEndpoint, type CatalogService } from '../../src/openstack/keystone.js';
import {
  DEFAULT_CREATE_RATE_WINDOW_SECONDS,
  OUTAGE_RETRY_SECONDS,
  UnifiedLimits,
  resolveLimits,
  type LimitsSource,
  type ProjectLimit,
  type RegisteredLimit,
} from '../../src/openstack/limits.js';

const quiet = createLogger('silent');

// What the lab registers for Glance (NOTES.md), in Keystone's shape.
const registered = (name: string, value: number): RegisteredLimit => ({ id: `r-${name}`, service_id: 'svc-image', region_id: 'RegionOne', resource_name: name, default_limit: value });
const projectLimit = (project: string, name: string, value: number): ProjectLimit => ({ id: `l-${project}-${name}`, project_id: project, domain_id: null, service_id: 'svc-image', region_id: 'RegionOne', resource_name: name, resource_limit: value });
const LAB_REGISTERED = [registered('image_count_total', 100), registered('image_size_total', 1000), registered('image_stage_total', 1000), registered('image_count_uploading', 10)];

describe('which limit wins', () => {
  const resolve = (input: Partial<Parameters<typeof resolveLimits>[0]>) => resolveLimits({ registered: [], project: [], createRateWindowSeconds: 60, ...input });

  it('takes the project limit over the registered one (the attacker with image_count_total=3)', () => {
    expect(resolve({ registered: LAB_REGISTERED, project: [projectLimit('attacker', 'image_count_total', 3)] })).toEqual({
      image_count_total: 3, image_count_uploading: 10, image_size_total: 1000, image_stage_total: 1000,
    });
  });

  it('takes the registered limit over the static fallback, and the fallback over nothing', () => {
    expect(resolve({ registered: [registered('image_count_total', 100)], fallback: { image_count_total: 5, image_size_total: 50 } })).toEqual({ image_count_total: 100, image_size_total: 50 });
  });

  it('reads a negative value as unlimited, at every level', () => {
    expect(resolve({ registered: [registered('image_count_total', 100)], project: [projectLimit('p', 'image_count_total', -1)], fallback: { image_count_total: 5 } })).toEqual({});
    expect(resolve({ registered: [registered('image_size_total', -1)], fallback: { image_size_total: 5 } })).toEqual({});
    expect(resolve({ fallback: { image_stage_total: -1 } })).toEqual({});
  });

  it('never turns an absent limit into zero, while a real zero stays zero', () => {
    expect(resolve({})).toEqual({});
    expect(resolve({ project: [projectLimit('p', 'image_count_uploading', 0)] })).toEqual({ image_count_uploading: 0 });
  });

  it('gives image_create_rate the configured window, since Keystone stores only the count', () => {
    expect(resolve({ registered: [registered('image_create_rate', 10)], createRateWindowSeconds: 300 })).toEqual({ image_create_rate: { count: 10, windowSeconds: 300 } });
    expect(resolve({ fallback: { image_create_rate: { count: 4, windowSeconds: 30 } } })).toEqual({ image_create_rate: { count: 4, windowSeconds: 30 } });
  });

  it("ignores names that are not Glance's resources", () => {
    expect(resolve({ registered: [registered('cores', 20), registered('image_count_totl', 1)] })).toEqual({});
  });
});

describe('settings', () => {
  it('documents the window default, and takes both settings from the one environment schema', () => {
    expect(DEFAULT_CREATE_RATE_WINDOW_SECONDS).toBe(60);
    expect(loadConfig({})).toMatchObject({ createRateWindowSeconds: 60, limitsCacheSeconds: 60 });
    expect(loadConfig({ QUOTA_CREATE_RATE_WINDOW: '3600', LIMITS_CACHE_SECONDS: '0' })).toMatchObject({ createRateWindowSeconds: 3600, limitsCacheSeconds: 0 });
  });

  it('names the variable and the fix', () => {
    expect(() => loadConfig({ QUOTA_CREATE_RATE_WINDOW: '1m' })).toThrow(/QUOTA_CREATE_RATE_WINDOW: .*got '1m'; for example QUOTA_CREATE_RATE_WINDOW=60/);
    expect(() => loadConfig({ LIMITS_CACHE_SECONDS: '-5' })).toThrow(/LIMITS_CACHE_SECONDS: .*got '-5'; for example LIMITS_CACHE_SECONDS=60/);
  });
});

function fakeSource() {
  const state = { registered: [...LAB_REGISTERED], project: new Map<string, ProjectLimit[]>(), down: false, calls: { registered: 0, project: 0 } };
  const source: LimitsSource = {
    async registeredLimits() {
      state.calls.registered++;
      if (state.down) throw new OpenStackUnreachableError('keystone', 'GET', 'http://keystone/v3/registered_limits', 4, 'keystone: GET http://keystone/v3/registered_limits got no answer after 4 attempts');
      return state.registered;
    },
    async projectLimits(projectId) {
      state.calls.project++;
      if (state.down) throw new OpenStackUnreachableError('keystone', 'GET', 'http://keystone/v3/limits', 4, 'keystone: GET http://keystone/v3/limits got no answer after 4 attempts');
      return state.project.get(projectId) ?? [];
    },
  };
  return { source, state };
}

describe('the limits cache', () => {
  it('asks Keystone once per project per LIMITS_CACHE_SECONDS, and shares the registered limits', async () => {
    const { source, state } = fakeSource();
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 3)]);
    let now = 1_000_000;
    const limits = new UnifiedLimits(source, { cacheSeconds: 60, now: () => now, log: quiet });
    expect(await limits.limitsFor('attacker')).toMatchObject({ image_count_total: 3 });
    expect(await limits.limitsFor('demo')).toMatchObject({ image_count_total: 100 });
    now += 59_000;
    await limits.limitsFor('attacker');
    expect(state.calls).toEqual({ registered: 1, project: 2 });
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 7)]);
    now += 2_000;
    expect(await limits.lookup('attacker')).toEqual({ limits: expect.objectContaining({ image_count_total: 7 }), origin: 'keystone', fetchedAt: now });
    expect(state.calls).toEqual({ registered: 2, project: 3 });
  });

  it('makes concurrent lookups of one project share one Keystone round', async () => {
    const { source, state } = fakeSource();
    const limits = new UnifiedLimits(source, { log: quiet });
    await Promise.all([limits.limitsFor('demo'), limits.limitsFor('demo'), limits.limitsFor('demo')]);
    expect(state.calls).toEqual({ registered: 1, project: 1 });
  });

  it('keeps the last known limits in force while Keystone is down, logs and counts each failure', async () => {
    const { source, state } = fakeSource();
    state.project.set('attacker', [projectLimit('attacker', 'image_count_total', 3)]);
    let now = 1_000_000;
    const lines: string[] = [];
    const sink = new Writable({ write(chunk: Buffer, _enc, done) { lines.push(chunk.toString()); done(); } });
    const limits = new UnifiedLimits(source, { cacheSeconds: 60, now: () => now, log: createLogger('info', sink) });
    const fetchedAt = now;
    await limits.limitsFor('attacker');

    state.down = true;
    now += 61_000;
    expect(await limits.lookup('attacker')).toEqual({ limits: expect.objectContaining({ image_count_total: 3 }), origin: 'last-known', fetchedAt });
    expect(limits.failures).toBe(1);
    expect(lines.join('')).toContain('the last known limits stay in force');

    // Within the outage retry period nobody waits on a dead Keystone again.
    now += (OUTAGE_RETRY_SECONDS - 1) * 1000;
    await limits.limitsFor('attacker');
    expect(limits.failures).toBe(1);
    now += 2_000;
    await limits.limitsFor('attacker');
    expect(limits.failures).toBe(2);

    state.down = false;
    now += OUTAGE_RETRY_SECONDS * 1000;
    expect((await limits.lookup('attacker')).origin).toBe('keystone');
  });

  it('with nothing known, falls back to registered limits seen earlier, then to the static ones, never to zero', async () => {
    const { source, state } = fakeSource();
    let now = 1_000_000;
    const limits = new UnifiedLimits(source, { cacheSeconds: 60, now: () => now, fallback: new StaticLimits({ image_count_total: 50, image_create_rate: { count: 20, windowSeconds: 60 } }), log: quiet });
    await limits.limitsFor('demo');
    state.down = true;
    now += 61_000;
    expect(await limits.lookup('newcomer')).toEqual({
      limits: { image_count_total: 100, image_count_uploading: 10, image_size_total: 1000, image_stage_total: 1000, image_create_rate: { count: 20, windowSeconds: 60 } },
      origin: 'fallback',
    });

    const cold = new UnifiedLimits(source, { fallback: new StaticLimits({ image_count_total: 50 }), log: quiet });
    expect(await cold.lookup('demo')).toEqual({ limits: { image_count_total: 50 }, origin: 'fallback' });
    const bare = new UnifiedLimits(source, { log: quiet });
    expect(await bare.limitsFor('demo')).toEqual({});
    expect(cold.failures + bare.failures).toBe(2);
  });
});

describe('the catalog', () => {
  const catalog: CatalogService[] = [
    { id: 'svc-keystone', type: 'identity', endpoints: [{ id: 'k', interface: 'public', region_id: 'RegionOne', url: 'http://k:5000/v3' }] },
    {
      id: 'svc-image', type: 'image', name: 'glance', endpoints: [
        { id: 'a', interface: 'public', region_id: 'RegionOne', url: 'https://glance-one:9292/' },
        { id: 'b', interface: 'public', region_id: 'RegionTwo', url: 'https://glance-two:9292' },
      ],
    },
  ];

  it('gives the endpoint, its service id (for limits) and its region', () => {
    expect(findEndpoint(catalog, 'image', 'public', 'RegionTwo')).toEqual({ url: 'https://glance-two:9292', serviceId: 'svc-image', regionId: 'RegionTwo' });
  });

  it('refuses to guess between regions', () => {
    expect(() => findEndpoint(catalog, 'image', 'public')).toThrow("catalog: 'image' endpoints with interface 'public' exist in regions RegionOne, RegionTwo; set OS_REGION_NAME to the one to enforce");
  });

  it('says when there is no image service at all', () => {
    expect(() => findEndpoint(catalog.slice(0, 1), 'image', 'public')).toThrow("catalog: no 'image' endpoint with interface 'public'; the catalog has no 'image' service at all: register it in Keystone (openstack service create image), or set GLANCE_URL");
  });
});
