import { z } from 'zod';
import { CatalogError } from './errors.js';
import type { EndpointInterface } from './identity.js';

/**
 * Keystone's service catalog, as a token carries it: where Glance (or any service type) is for
 * the interface and region the operator chose.
 */

const CatalogEndpoint = z.object({
  id: z.string(),
  interface: z.string(),
  region_id: z.string().nullish(),
  region: z.string().nullish(),
  url: z.string(),
});

export const CatalogService = z.object({
  id: z.string(),
  type: z.string(),
  name: z.string().optional(),
  endpoints: z.array(CatalogEndpoint),
});
export type CatalogService = z.infer<typeof CatalogService>;

export interface ResolvedEndpoint {
  url: string;
  serviceId: string;
  regionId?: string;
}

/**
 * The endpoint of `type` for `iface`, in `region` when one is given. Without a region the match
 * must be unique, because picking one of several regions would enforce against the wrong Glance.
 */
export function findEndpoint(catalog: readonly CatalogService[], type: string, iface: EndpointInterface, region?: string): ResolvedEndpoint {
  const matches = catalog
    .filter((s) => s.type === type)
    .flatMap((s) => s.endpoints.map((e) => ({ service: s, endpoint: e })))
    .filter(({ endpoint }) => endpoint.interface === iface)
    .filter(({ endpoint }) => !region || (endpoint.region_id ?? endpoint.region) === region);
  const offered = catalog.filter((s) => s.type === type).flatMap((s) => s.endpoints.map((e) => `${e.interface}/${e.region_id ?? e.region ?? '(no region)'}`));
  const first = matches[0];
  if (!first) {
    throw new CatalogError(
      `catalog: no '${type}' endpoint with interface '${iface}'${region ? ` in region '${region}'` : ''}; ` +
        (offered.length
          ? `it offers ${offered.join(', ')}: set OS_INTERFACE and OS_REGION_NAME to one of those${type === 'image' ? ', or set GLANCE_URL' : ''}`
          : `the catalog has no '${type}' service at all: register it in Keystone (openstack service create ${type})${type === 'image' ? ', or set GLANCE_URL' : ''}`),
    );
  }
  const regions = new Set(matches.map(({ endpoint }) => endpoint.region_id ?? endpoint.region ?? ''));
  if (!region && regions.size > 1) {
    throw new CatalogError(
      `catalog: '${type}' endpoints with interface '${iface}' exist in regions ${[...regions].join(', ')}; set OS_REGION_NAME to the one to enforce`,
    );
  }
  const regionId = first.endpoint.region_id ?? first.endpoint.region ?? undefined;
  return { url: first.endpoint.url.replace(/\/+$/, ''), serviceId: first.service.id, ...(regionId ? { regionId } : {}) };
}
