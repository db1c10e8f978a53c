import { z } from 'zod';
import { createLogger, type Logger } from '../log.js';
import type { ProjectLimits } from '../quota/limits.js';
import type { LimitSource } from '../quota/static-limits.js';
import { CREATE_RATE, Resource } from '../quota/resources.js';
import type { KeystoneClient } from './keystone.js';

/**
 * Per-project limits from Keystone unified limits, read the way Glance reads them
 * (glance/quota/keystone.py through oslo.limit, flat model): the project limit if there is one,
 * else the registered (default) limit, both for Glance's service and region. On top of that: a
 * static fallback from configuration, and a cache that keeps the last known limits in force while
 * Keystone is away.
 *
 * The rules, in order: project limit > registered limit > static fallback; a negative value means
 * unlimited; a limit that is nowhere is unlimited, never zero.
 */

/**
 * Window of `image_create_rate` in seconds when QUOTA_CREATE_RATE_WINDOW is not set. Keystone
 * stores one integer per limit, so the count comes from Keystone and the window from our
 * configuration: `image_create_rate=10` with the default window means 10 creates per 60 s.
 */
export const DEFAULT_CREATE_RATE_WINDOW_SECONDS = 60;

/** How long a project's limits are reused before Keystone is asked again (LIMITS_CACHE_SECONDS). */
export const DEFAULT_LIMITS_CACHE_SECONDS = 60;

/**
 * While Keystone fails, it is asked again at most this often (or every LIMITS_CACHE_SECONDS if
 * shorter), so an outage costs one slow lookup per project per period, not one per event.
 */
export const OUTAGE_RETRY_SECONDS = 10;

export type { ProjectLimits };

/** An item of `GET /v3/registered_limits`. */
export const RegisteredLimit = z.object({
  id: z.string(),
  service_id: z.string(),
  region_id: z.string().nullish(),
  resource_name: z.string(),
  default_limit: z.number().int(),
});
export type RegisteredLimit = z.infer<typeof RegisteredLimit>;

/** An item of `GET /v3/limits`. */
export const ProjectLimit = z.object({
  id: z.string(),
  project_id: z.string().nullish(),
  domain_id: z.string().nullish(),
  service_id: z.string(),
  region_id: z.string().nullish(),
  resource_name: z.string(),
  resource_limit: z.number().int(),
});
export type ProjectLimit = z.infer<typeof ProjectLimit>;

const RegisteredLimitList = z.object({ registered_limits: z.array(RegisteredLimit), truncated: z.boolean().optional() });
const ProjectLimitList = z.object({ limits: z.array(ProjectLimit), truncated: z.boolean().optional() });

/**
 * The precedence rule, with no I/O: one value per resource, first found wins, negative = unlimited.
 * Names other than the five resources (another service's limits, typos) are ignored.
 */
export function resolveLimits(input: {
  registered: readonly Pick<RegisteredLimit, 'resource_name' | 'default_limit'>[];
  project: readonly Pick<ProjectLimit, 'resource_name' | 'resource_limit'>[];
  /** The static limits (QUOTA_LIMITS, QUOTA_LIMITS_FILE) of this project, already parsed. */
  fallback?: ProjectLimits;
  createRateWindowSeconds: number;
}): ProjectLimits {
  const out: ProjectLimits = {};
  for (const resource of Resource.options) {
    const value =
      input.project.find((l) => l.resource_name === resource)?.resource_limit ??
      input.registered.find((l) => l.resource_name === resource)?.default_limit;
    if (value === undefined) {
      // Nothing in Keystone: the static limit, whose rate carries its own window ("20/60s").
      const fallback = input.fallback?.[resource];
      if (resource === CREATE_RATE) {
        if (input.fallback?.image_create_rate) out.image_create_rate = input.fallback.image_create_rate;
      } else if (typeof fallback === 'number' && fallback >= 0) {
        out[resource] = fallback;
      }
      continue;
    }
    if (value < 0) continue;
    if (resource === CREATE_RATE) out.image_create_rate = { count: value, windowSeconds: input.createRateWindowSeconds };
    else out[resource] = value;
  }
  return out;
}

/** Where limits come from; the Keystone adapter below, or a fake in tests. */
export interface LimitsSource {
  /** The registered (default) limits of the image service, for every resource. */
  registeredLimits(): Promise<RegisteredLimit[]>;
  /** The project limits of one project for the image service, for every resource. */
  projectLimits(projectId: string): Promise<ProjectLimit[]>;
}

export interface KeystoneLimitsOptions {
  /** Service id of Glance in Keystone; default: the `image` service of the catalog. */
  serviceId?: string;
  /** Region of the limits; default: OS_REGION_NAME, else the region of the catalog's image endpoint. */
  regionId?: string;
  log?: Logger;
}

/**
 * Reads limits with the system-scoped token, two calls per refresh: registered limits of the
 * image service (shared by all projects) and the project's limits. Throws `ScopeUnavailableError`
 * at once when the credentials cannot give a system-scoped token, because a project-scoped one
 * would silently read every other project's limits as "none".
 */
export function keystoneLimitsSource(keystone: KeystoneClient, options: KeystoneLimitsOptions = {}): LimitsSource {
  keystone.requireScope('system', 'unified limits');
  const log = options.log ?? createLogger();
  let target: Promise<{ serviceId: string; regionId?: string }> | undefined;
  const resolveTarget = () => {
    target ??= (async () => {
      if (options.serviceId) {
        const regionId = options.regionId ?? keystone.credentials.regionName;
        return { serviceId: options.serviceId, ...(regionId ? { regionId } : {}) };
      }
      const endpoint = await keystone.endpoint('image', 'system');
      const regionId = options.regionId ?? keystone.credentials.regionName ?? endpoint.regionId;
      return { serviceId: endpoint.serviceId, ...(regionId ? { regionId } : {}) };
    })().catch((error: unknown) => {
      target = undefined; // try the catalog again next time
      throw error;
    });
    return target;
  };
  const query = (params: Record<string, string | undefined>) =>
    new URLSearchParams(Object.entries(params).filter((e): e is [string, string] => e[1] !== undefined)).toString();
  const warnIfTruncated = (what: string, truncated: boolean | undefined) => {
    // Keystone's [DEFAULT] list_limit cuts lists without a next link; a missing limit reads as unlimited.
    if (truncated) log.warn({ what }, 'keystone truncated a limits list ([DEFAULT] list_limit); some limits may be read as unlimited');
  };
  return {
    async registeredLimits() {
      const { serviceId, regionId } = await resolveTarget();
      const body = await keystone.getJson('system', `/registered_limits?${query({ service_id: serviceId, region_id: regionId })}`, RegisteredLimitList);
      warnIfTruncated('registered_limits', body.truncated);
      return body.registered_limits;
    },
    async projectLimits(projectId) {
      const { serviceId, regionId } = await resolveTarget();
      const body = await keystone.getJson('system', `/limits?${query({ service_id: serviceId, project_id: projectId, region_id: regionId })}`, ProjectLimitList);
      warnIfTruncated('limits', body.truncated);
      // Keystone filters on project_id already; this guards against a domain-level limit slipping in.
      return body.limits.filter((l) => l.project_id === projectId);
    },
  };
}

export type LimitsOrigin = 'keystone' | 'last-known' | 'fallback';

export interface LimitsLookup {
  limits: ProjectLimits;
  /** keystone: fresh or cached; last-known: Keystone failed, the previous answer stays; fallback: failed with nothing known. */
  origin: LimitsOrigin;
  /** Epoch ms of the Keystone answer behind `limits`; absent for `fallback`. */
  fetchedAt?: number;
}

export interface UnifiedLimitsOptions {
  /** Static limits below Keystone's, per project (QUOTA_LIMITS with QUOTA_LIMITS_FILE on top). */
  fallback?: LimitSource;
  createRateWindowSeconds?: number;
  cacheSeconds?: number;
  /** Epoch ms; injected by tests. */
  now?: () => number;
  log?: Logger;
}

interface CacheEntry {
  limits: ProjectLimits;
  origin: LimitsOrigin;
  fetchedAt?: number;
  expiresAt: number;
}

/**
 * @example
 *   const keystone = new KeystoneClient(loadCredentials());
 *   const limits = new UnifiedLimits(keystoneLimitsSource(keystone), { ...limitsSettingsFromEnv(), fallback: new StaticLimits({ image_count_total: 100 }) });
 *   await limits.limitsFor(projectId); // { image_count_total: 3, image_size_total: 1000, ... }
 */
export class UnifiedLimits implements LimitSource {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inFlight = new Map<string, Promise<LimitsLookup>>();
  private registered?: { limits: RegisteredLimit[]; expiresAt: number };
  private lastRegistered: RegisteredLimit[] = [];
  private failureCount = 0;
  private readonly fallback: LimitSource;
  private readonly windowSeconds: number;
  private readonly ttlMs: number;
  private readonly now: () => number;
  private readonly log: Logger;

  constructor(
    private readonly source: LimitsSource,
    options: UnifiedLimitsOptions = {},
  ) {
    this.fallback = options.fallback ?? { limitsFor: async () => ({}) };
    this.windowSeconds = options.createRateWindowSeconds ?? DEFAULT_CREATE_RATE_WINDOW_SECONDS;
    this.ttlMs = (options.cacheSeconds ?? DEFAULT_LIMITS_CACHE_SECONDS) * 1000;
    this.now = options.now ?? Date.now;
    this.log = options.log ?? createLogger();
  }

  /** How many refreshes failed (Keystone unreachable, refused, or answered nonsense) since start. */
  get failures(): number {
    return this.failureCount;
  }

  /** The limits in force for `projectId`; never throws for a Keystone failure. */
  async limitsFor(projectId: string): Promise<ProjectLimits> {
    return (await this.lookup(projectId)).limits;
  }

  /** `limitsFor` with where the answer came from. */
  lookup(projectId: string): Promise<LimitsLookup> {
    const entry = this.cache.get(projectId);
    if (entry && this.now() < entry.expiresAt) return Promise.resolve(toLookup(entry));
    const running = this.inFlight.get(projectId);
    if (running) return running;
    const refresh = this.refresh(projectId, entry).finally(() => this.inFlight.delete(projectId));
    this.inFlight.set(projectId, refresh);
    return refresh;
  }

  private async refresh(projectId: string, previous: CacheEntry | undefined): Promise<LimitsLookup> {
    const startedAt = this.now();
    try {
      const [registered, project] = await Promise.all([this.registeredLimits(startedAt), this.source.projectLimits(projectId)]);
      const limits = resolveLimits({ registered, project, fallback: await this.fallback.limitsFor(projectId), createRateWindowSeconds: this.windowSeconds });
      const entry: CacheEntry = { limits, origin: 'keystone', fetchedAt: startedAt, expiresAt: startedAt + this.ttlMs };
      this.cache.set(projectId, entry);
      return toLookup(entry);
    } catch (error) {
      this.failureCount++;
      const retryAt = this.now() + Math.min(this.ttlMs, OUTAGE_RETRY_SECONDS * 1000);
      const reason = error instanceof Error ? error.message : String(error);
      if (previous && previous.origin !== 'fallback') {
        this.log.warn({ projectId, failures: this.failureCount, fetchedAt: previous.fetchedAt, err: reason }, 'cannot refresh unified limits; the last known limits stay in force');
        const kept: CacheEntry = { ...previous, origin: 'last-known', expiresAt: retryAt };
        this.cache.set(projectId, kept);
        return toLookup(kept);
      }
      // Nothing known for this project: registered limits seen earlier still beat the static fallback.
      const limits = resolveLimits({ registered: this.lastRegistered, project: [], fallback: await this.fallback.limitsFor(projectId), createRateWindowSeconds: this.windowSeconds });
      this.log.error({ projectId, failures: this.failureCount, limits, err: reason }, 'cannot read unified limits and none are known for this project; using registered/static fallback limits (absent = unlimited)');
      const entry: CacheEntry = { limits, origin: 'fallback', expiresAt: retryAt };
      this.cache.set(projectId, entry);
      return toLookup(entry);
    }
  }

  private async registeredLimits(now: number): Promise<RegisteredLimit[]> {
    if (this.registered && now < this.registered.expiresAt) return this.registered.limits;
    const limits = await this.source.registeredLimits();
    this.registered = { limits, expiresAt: now + this.ttlMs };
    this.lastRegistered = limits;
    return limits;
  }
}

function toLookup(entry: CacheEntry): LimitsLookup {
  return { limits: entry.limits, origin: entry.origin, ...(entry.fetchedAt !== undefined ? { fetchedAt: entry.fetchedAt } : {}) };
}
