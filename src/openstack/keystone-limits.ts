import { z } from 'zod';
import { createLogger, type Logger } from '../log.js';
import { displayUrl } from './errors.js';
import type { KeystoneClient } from './keystone.js';

/**
 * Keystone's unified limits API, as Glance's oslo.limit reads it for the image service and its
 * region: the registered (default) limits and the project limits, each in one listing. limits.ts
 * keeps the table and the precedence.
 */

/** `links.next` pages followed per listing; Keystone 22 never sets it, so this is a guard only. */
export const MAX_LISTING_PAGES = 1_000;

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

const Links = z.object({ next: z.string().nullish() }).partial().nullish();
const RegisteredLimitList = z.object({ registered_limits: z.array(RegisteredLimit), truncated: z.boolean().optional(), links: Links });
const ProjectLimitList = z.object({ limits: z.array(ProjectLimit), truncated: z.boolean().optional(), links: Links });

/** Every project limit of the image service in the region, as one listing gave it. */
export interface ProjectLimitListing {
  limits: ProjectLimit[];
  /** Keystone cut the list (`[unified_limit] list_limit` or `[DEFAULT] list_limit`) and gave no next page. */
  truncated: boolean;
}

/**
 * Keystone's unified limits as `UnifiedLimits` reads them: the Keystone adapter below, or a fake in
 * tests. Not a `LimitSource` (src/quota/static-limits.ts): it returns Keystone's raw entries, which
 * `UnifiedLimits` turns into one.
 */
export interface KeystoneLimitsReader {
  /** The registered (default) limits of the image service, for every resource. */
  registeredLimits(): Promise<RegisteredLimit[]>;
  /** The project limits of every project for the image service, for every resource. */
  allProjectLimits(): Promise<ProjectLimitListing>;
  /** The project limits of one project; used only while the full listing comes back truncated. */
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
 * Reads limits with the system-scoped token: `GET /v3/registered_limits` and `GET /v3/limits`,
 * both filtered by the image service and region (the filters oslo.limit uses for Glance), so a
 * refresh costs two calls whatever the number of projects. Throws `ScopeUnavailableError` at once
 * when the credentials cannot give a system-scoped token, because a project-scoped one would
 * silently read every other project's limits as "none".
 */
export function keystoneLimitsReader(keystone: KeystoneClient, options: KeystoneLimitsOptions = {}): KeystoneLimitsReader {
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
  // The filters are Keystone's; checking them again here costs nothing and keeps another
  // service's or region's limit (or a domain-level one) out even if a proxy dropped the query.
  const ours = (t: { serviceId: string; regionId?: string }) => (l: { service_id: string; region_id?: string | null | undefined }) =>
    l.service_id === t.serviceId && (t.regionId === undefined || l.region_id === t.regionId);
  type Page<T> = { items: T[]; truncated?: boolean | undefined; next?: string | null | undefined };
  /** Follows `links.next` (absent in Keystone 22) only under OS_AUTH_URL: the token goes nowhere else. */
  async function list<T>(path: string, page: (pathAndQuery: string) => Promise<Page<T>>): Promise<{ items: T[]; truncated: boolean }> {
    const out: T[] = [];
    let next = path;
    for (let pages = 1; ; pages++) {
      const body = await page(next);
      out.push(...body.items);
      if (!body.next) return { items: out, truncated: body.truncated === true };
      if (pages === MAX_LISTING_PAGES) throw new Error(`keystone: ${path} gave more than ${MAX_LISTING_PAGES} pages; refusing to follow more`);
      if (!body.next.startsWith(`${keystone.credentials.authUrl}/`)) {
        throw new Error(
          `keystone: the next page of ${path} is at ${displayUrl(body.next)}, outside OS_AUTH_URL ${displayUrl(keystone.credentials.authUrl)}; not sending the token there`,
        );
      }
      next = body.next.slice(keystone.credentials.authUrl.length);
    }
  }
  const registeredPage = async (pathAndQuery: string): Promise<Page<RegisteredLimit>> => {
    const b = await keystone.getJson('system', pathAndQuery, RegisteredLimitList);
    return { items: b.registered_limits, truncated: b.truncated, next: b.links?.next };
  };
  const limitsPage = async (pathAndQuery: string): Promise<Page<ProjectLimit>> => {
    const b = await keystone.getJson('system', pathAndQuery, ProjectLimitList);
    return { items: b.limits, truncated: b.truncated, next: b.links?.next };
  };
  return {
    async registeredLimits() {
      const t = await resolveTarget();
      const { items, truncated } = await list(`/registered_limits?${query({ service_id: t.serviceId, region_id: t.regionId })}`, registeredPage);
      // A handful per service and region; a cut here is a Keystone misconfiguration worth a word.
      if (truncated)
        log.warn(
          { what: 'registered_limits' },
          'keystone truncated the registered limits ([unified_limit] list_limit); some resources may be read as unlimited',
        );
      return items.filter(ours(t));
    },
    async allProjectLimits() {
      const t = await resolveTarget();
      const { items, truncated } = await list(`/limits?${query({ service_id: t.serviceId, region_id: t.regionId })}`, limitsPage);
      return { limits: items.filter(ours(t)).filter((l) => l.project_id), truncated };
    },
    async projectLimits(projectId) {
      const t = await resolveTarget();
      const { items } = await list(`/limits?${query({ service_id: t.serviceId, project_id: projectId, region_id: t.regionId })}`, limitsPage);
      return items.filter(ours(t)).filter((l) => l.project_id === projectId);
    },
  };
}
