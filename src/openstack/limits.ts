import { LRUCache } from 'lru-cache';
import { ENV_DEFAULTS } from '../config.js';
import { createLogger, type Logger } from '../log.js';
import { resolveLimits, type ConfirmedLimits, type LimitSource, type ProjectLimits } from '../quota/limits.js';
import type { KeystoneLimitsReader, ProjectLimit, RegisteredLimit } from './keystone-limits.js';

/**
 * Per-project limits from Keystone unified limits, read the way Glance reads them
 * (glance/quota/keystone.py through oslo.limit, flat model): the project limit if there is one,
 * else the registered (default) limit, both for Glance's service and region. On top of that: a
 * static fallback from configuration, and one table of every limit, read in two listings and
 * kept in force while Keystone is away.
 *
 * The rules, in order: project limit > registered limit > static fallback; a negative value means
 * unlimited; a limit that is nowhere is unlimited, never zero.
 */

/**
 * While Keystone fails, it is asked again at most this often (or every LIMITS_CACHE_SECONDS if
 * shorter), so an outage costs one slow refresh per period, not one per event.
 */
export const OUTAGE_RETRY_SECONDS = 10;

/**
 * `refresh` (a project is over: is its limit still what we think?) reads Keystone at most this
 * often; a flood puts many projects over at once, and one fresh table answers them all.
 */
export const ON_DEMAND_REFRESH_SECONDS = 5;

/**
 * Only when Keystone truncates the limits listing (`[unified_limit] list_limit`) are projects read
 * one by one; at most this many of those answers are kept.
 */
export const MAX_PROJECT_READS_KEPT = 10_000;

export type { ProjectLimits };

export type LimitsOrigin = 'keystone' | 'last-known' | 'fallback';

export interface LimitsLookup {
  limits: ProjectLimits;
  /** keystone: the latest refresh succeeded; last-known: it failed, the previous table stays; fallback: no table yet. */
  origin: LimitsOrigin;
  /** Epoch ms of the Keystone answer behind `limits`; absent for `fallback`. */
  fetchedAt?: number;
}

export interface UnifiedLimitsOptions {
  /** Static limits below Keystone's, per project (QUOTA_LIMITS with QUOTA_LIMITS_FILE on top). */
  fallback?: LimitSource;
  /**
   * Window of `image_create_rate` in seconds (QUOTA_CREATE_RATE_WINDOW). Keystone stores one
   * integer per limit, so the count comes from Keystone and the window from our configuration.
   */
  createRateWindowSeconds?: number;
  /** How long the limits table is reused before Keystone is asked again (LIMITS_CACHE_SECONDS). */
  cacheSeconds?: number;
  /** Least time between two reads `refresh` starts; default ON_DEMAND_REFRESH_SECONDS. */
  refreshSeconds?: number;
  /** Epoch ms; injected by tests. */
  now?: () => number;
  log?: Logger;
}

/** One successful read of Keystone: every limit of the image service in the region. */
interface LimitsTable {
  registered: RegisteredLimit[];
  byProject: Map<string, ProjectLimit[]>;
  /** Keystone cut the project listing: a project's entries here may be incomplete. */
  truncated: boolean;
  fetchedAt: number;
}

/**
 * @example
 *   const keystone = new KeystoneClient(loadCredentials());
 *   const limits = new UnifiedLimits(keystoneLimitsReader(keystone), { cacheSeconds: 300, fallback: new StaticLimits({ image_count_total: 100 }) });
 *   await limits.limitsFor(projectId); // { image_count_total: 3, image_size_total: 1000, ... }
 *   await limits.refresh(projectId);   // the project is over: read Keystone again (rate-limited) first
 */
export class UnifiedLimits implements LimitSource {
  private table?: LimitsTable;
  /** The latest refresh failed: `table` is the last known one. */
  private stale = false;
  private expiresAt = 0;
  private lastStartedAt?: number;
  private inFlight?: Promise<void>;
  /** Per-project reads, only while the listing is truncated; keyed by project, for `table.fetchedAt`. */
  private readonly projectReads = new LRUCache<string, { fetchedAt: number; limits: ProjectLimit[] }>({ max: MAX_PROJECT_READS_KEPT });
  private failureCount = 0;
  private readonly fallback: LimitSource;
  private readonly windowSeconds: number;
  private readonly ttlMs: number;
  private readonly refreshMs: number;
  private readonly now: () => number;
  private readonly log: Logger;

  constructor(
    private readonly source: KeystoneLimitsReader,
    options: UnifiedLimitsOptions = {},
  ) {
    this.fallback = options.fallback ?? { limitsFor: async () => ({}) };
    this.windowSeconds = options.createRateWindowSeconds ?? ENV_DEFAULTS.QUOTA_CREATE_RATE_WINDOW;
    this.ttlMs = (options.cacheSeconds ?? ENV_DEFAULTS.LIMITS_CACHE_SECONDS) * 1000;
    this.refreshMs = (options.refreshSeconds ?? ON_DEMAND_REFRESH_SECONDS) * 1000;
    this.now = options.now ?? Date.now;
    this.log = options.log ?? createLogger();
  }

  /** How many reads failed (Keystone unreachable, refused, or answered nonsense) since start. */
  get failures(): number {
    return this.failureCount;
  }

  /** The limits in force for `projectId`; never throws for a Keystone failure. */
  async limitsFor(projectId: string): Promise<ProjectLimits> {
    return (await this.lookup(projectId)).limits;
  }

  /**
   * The limits of a project found over, read again from Keystone so that a limit raised or lowered
   * a moment ago acts at once. Calls in a burst share one read, and a read starts at most every
   * `refreshSeconds` (while Keystone fails, every OUTAGE_RETRY_SECONDS); in between, the table in
   * hand answers. Never throws for a Keystone failure.
   */
  async refresh(projectId: string): Promise<ProjectLimits> {
    const now = this.now();
    // During an outage, over projects wait for the outage retry like everyone else.
    const due = (this.lastStartedAt === undefined || now - this.lastStartedAt >= this.refreshMs) && (!this.stale || now >= this.expiresAt);
    if (!this.inFlight && due) this.startRead();
    await this.inFlight;
    return (await this.resolve(projectId)).limits;
  }

  /**
   * `refresh`, and trusted only while the table in hand is Keystone's own answer of no longer ago
   * than LIMITS_CACHE_SECONDS, the freshness the enforcer works with when Keystone is well: a
   * Keystone blip does not stop enforcement, an outage longer than that does. Neither the static
   * fallback (before a first read) nor an older table is ever acted on: a limit raised during the
   * outage would otherwise cost real images.
   */
  async confirm(projectId: string): Promise<ConfirmedLimits> {
    await this.refresh(projectId);
    const { limits } = await this.resolve(projectId);
    const { trusted, detail } = this.status();
    return trusted ? { trusted, limits } : { trusted, limits, reason: detail };
  }

  status(): { trusted: boolean; detail: string } {
    if (!this.table) {
      return {
        trusted: false,
        detail: `unavailable: Keystone's unified limits could not be read yet (${this.failureCount} failed reads); the static limits are not a stand-in for them`,
      };
    }
    const ageMs = this.now() - this.table.fetchedAt;
    if (this.stale && ageMs > this.ttlMs) {
      return {
        trusted: false,
        detail: `unavailable: the latest reads of Keystone's unified limits failed; the table in hand, from ${new Date(this.table.fetchedAt).toISOString()}, is older than LIMITS_CACHE_SECONDS (${this.ttlMs / 1000})`,
      };
    }
    return { trusted: true, detail: 'keystone' };
  }

  /** `limitsFor` with where the answer came from. */
  async lookup(projectId: string): Promise<LimitsLookup> {
    if (this.now() >= this.expiresAt) {
      if (!this.inFlight) this.startRead();
      await this.inFlight;
    }
    return this.resolve(projectId);
  }

  private startRead(): void {
    const startedAt = this.now();
    this.lastStartedAt = startedAt;
    this.inFlight = this.read(startedAt).finally(() => (this.inFlight = undefined));
  }

  private async read(startedAt: number): Promise<void> {
    try {
      const [registered, listing] = await Promise.all([this.source.registeredLimits(), this.source.allProjectLimits()]);
      const byProject = new Map<string, ProjectLimit[]>();
      for (const limit of listing.limits) {
        if (!limit.project_id) continue; // a domain-level limit: the flat model reads none
        const own = byProject.get(limit.project_id);
        if (own) own.push(limit);
        else byProject.set(limit.project_id, [limit]);
      }
      if (listing.truncated) {
        this.log.error(
          { listed: listing.limits.length },
          'keystone truncated the project limits listing ([unified_limit] list_limit or [DEFAULT] list_limit in keystone.conf); reading each project on its own until it is unset or above the number of limits',
        );
      }
      this.table = { registered, byProject, truncated: listing.truncated, fetchedAt: startedAt };
      this.projectReads.clear();
      this.stale = false;
      this.expiresAt = startedAt + this.ttlMs;
    } catch (error) {
      this.failureCount++;
      this.stale = true;
      this.expiresAt = this.now() + Math.min(this.ttlMs, OUTAGE_RETRY_SECONDS * 1000);
      const err = error instanceof Error ? error.message : String(error);
      if (this.table) {
        this.log.warn(
          { failures: this.failureCount, fetchedAt: this.table.fetchedAt, err },
          'cannot refresh unified limits; the last known limits stay in force',
        );
      } else {
        this.log.error(
          { failures: this.failureCount, err },
          'cannot read unified limits and none are known yet; using the static fallback limits (absent = unlimited)',
        );
      }
    }
  }

  private async resolve(projectId: string): Promise<LimitsLookup> {
    const fallback = await this.fallback.limitsFor(projectId);
    const table = this.table;
    if (!table) {
      return { limits: resolveLimits({ registered: [], project: [], fallback, createRateWindowSeconds: this.windowSeconds }), origin: 'fallback' };
    }
    const project = table.truncated ? await this.projectRead(projectId, table) : (table.byProject.get(projectId) ?? []);
    return {
      limits: resolveLimits({ registered: table.registered, project, fallback, createRateWindowSeconds: this.windowSeconds }),
      origin: this.stale ? 'last-known' : 'keystone',
      fetchedAt: table.fetchedAt,
    };
  }

  /** The old per-project read, for a truncated listing only; kept per table, at most MAX_PROJECT_READS_KEPT. */
  private async projectRead(projectId: string, table: LimitsTable): Promise<ProjectLimit[]> {
    const kept = this.projectReads.get(projectId);
    if (kept && kept.fetchedAt === table.fetchedAt) return kept.limits;
    try {
      const limits = await this.source.projectLimits(projectId);
      this.projectReads.set(projectId, { fetchedAt: table.fetchedAt, limits });
      return limits;
    } catch (error) {
      this.failureCount++;
      this.log.warn(
        { projectId, err: error instanceof Error ? error.message : String(error) },
        'cannot read the project limits of a project missing from a truncated listing; using what the listing gave',
      );
      return table.byProject.get(projectId) ?? [];
    }
  }
}
