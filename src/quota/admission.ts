import type { ProjectLimits } from './limits.js';
import { CREATE_RATE, type Resource } from './resources.js';

/**
 * The admission rule: may this request happen, before Glance writes a row? A plain function of the
 * request line, the project's count, its open reservations and its limits; the stores run it
 * inside their atomic step (Redis: its Lua twin in src/store/redis/reserve-create.lua).
 */

/**
 * What a request would change, by resource. Only a create for now; Glance's unified limits also
 * check uploads (`PUT .../file`, `PUT .../stage` against image_count_uploading, image_size_total,
 * image_stage_total; `POST .../import`), which fit here as further kinds with their own deltas
 * and bounds, decided by the same `judgeAdmission`.
 */
export type AdmissionRoute = { kind: 'image-create'; resource: 'image_count_total'; delta: 1 };

const IMAGE_CREATE: AdmissionRoute = { kind: 'image-create', resource: 'image_count_total', delta: 1 };

/**
 * The path as Glance routes it: an absolute-form target's scheme and host dropped, query and
 * fragment cut, percent-escapes decoded once (the WSGI server does, so `/v2/%69mages` is a create,
 * as the lab's Glance 25 answers), then repeated slashes collapsed (`//v2/images`, `/v2//images`
 * and `/%2Fv2/images` are creates there too). A malformed escape stays as it is.
 */
export function routedPath(uri: string): string {
  let path = uri.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i, '');
  path = path.split(/[?#]/, 1)[0]!;
  try {
    path = decodeURIComponent(path);
  } catch {
    path = path.replace(/%[0-9a-f]{2}/gi, (m) => String.fromCharCode(parseInt(m.slice(1), 16)));
  }
  return path.replace(/\/{2,}/g, '/');
}

/**
 * Which admission rule a proxied request falls under, or undefined: anything else is allowed. A
 * create is a POST (any case) to `/v2/images` or `/v1/images` once `routedPath` has normalised it;
 * Glance 25 answers `/v1/images` with 300, but an older Glance that serves v1 takes it.
 *
 * @example
 *   routeOf('POST', '/v2//images?x=1') // { kind: 'image-create', ... }
 *   routeOf('GET', '/v2/images')       // undefined
 */
export function routeOf(method: string, uri: string): AdmissionRoute | undefined {
  if (method.toUpperCase() !== 'POST') return undefined;
  const path = routedPath(uri);
  return path === '/v2/images' || path === '/v1/images' ? IMAGE_CREATE : undefined;
}

/** The bounds the store checks atomically for one create. Absent: unlimited. */
export interface AdmissionBounds {
  /** image_count_total. */
  countLimit?: number;
  /** image_create_rate: at most `count` creates in the window; `recent` were made in it already. */
  rate?: { count: number; recent: number };
}

/** The bounds a project's limits put on a create; `recent` is the ledger's creates in the rate window. */
export function boundsFor(limits: ProjectLimits, recentCreates: number): AdmissionBounds {
  const bounds: AdmissionBounds = {};
  const count = limits.image_count_total;
  if (count !== undefined && count >= 0) bounds.countLimit = count;
  const rate = limits.image_create_rate;
  if (rate) bounds.rate = { count: rate.count, recent: recentCreates };
  return bounds;
}

/**
 * The bounds that make the store's check (on the ledger's count) Glance's check: `phantom` images
 * the ledger counts and Glance's listing does not are added to the count limit, and taken from the
 * recent creates (forged creates are dated when the forger likes, so the window cannot tell).
 */
export function discounted(bounds: AdmissionBounds, phantom: number): AdmissionBounds {
  return {
    ...(bounds.countLimit !== undefined ? { countLimit: bounds.countLimit + phantom } : {}),
    ...(bounds.rate ? { rate: { count: bounds.rate.count, recent: Math.max(0, bounds.rate.recent - phantom) } } : {}),
  };
}

export type AdmissionVerdict = { admit: true } | { admit: false; resource: Resource; limit: number; usage: number; byReservations: boolean };

/**
 * Admit while what the project has plus what is already admitted and not yet seen on the bus stays
 * under each limit: (count + reserved) < image_count_total, (recent creates + reserved) <
 * image_create_rate's count. `byReservations`: the open reservations alone fill the limit, which
 * no forged notification can cause (they are the endpoint's own), so Glance need not be asked.
 */
export function judgeAdmission(count: number, reserved: number, bounds: AdmissionBounds): AdmissionVerdict {
  if (bounds.countLimit !== undefined && count + reserved >= bounds.countLimit) {
    return { admit: false, resource: 'image_count_total', limit: bounds.countLimit, usage: count + reserved, byReservations: reserved >= bounds.countLimit };
  }
  if (bounds.rate && bounds.rate.recent + reserved >= bounds.rate.count) {
    return {
      admit: false,
      resource: CREATE_RATE,
      limit: bounds.rate.count,
      usage: bounds.rate.recent + reserved,
      byReservations: reserved >= bounds.rate.count,
    };
  }
  return { admit: true };
}

/**
 * Glance's own words for a refused create (glance/quota/keystone.py through oslo.limit's
 * ProjectOverLimit), so that clients and operators read what Glance's unified limits would say.
 *
 * @example
 *   glanceOverLimitMessage('p1', 'image_count_total', 5, 5)
 *   // 'Project p1 is over a limit for [Resource image_count_total is over limit of 5 due to current usage 5 and delta 1]'
 */
export function glanceOverLimitMessage(projectId: string, resource: Resource, limit: number, usage: number, delta = 1): string {
  return `Project ${projectId} is over a limit for [Resource ${resource} is over limit of ${limit} due to current usage ${usage} and delta ${delta}]`;
}

/** Glance's JSON body of a 413 with that message, as its API sends it to a client asking for JSON. */
export function glanceOverLimitBody(message: string): string {
  return JSON.stringify({
    message: `The request returned a 413 Request Entity Too Large. This generally means that rate limiting or a quota threshold was breached.\n\nThe response body:\n${message}<br /><br />\n\n\n`,
    code: '413 Request Entity Too Large',
    title: 'Request Entity Too Large',
  });
}

/**
 * Per project, how many of a committed batch's events were new `image.create`s: each ends one of
 * the project's admission reservations, its image being in the count from now on. Duplicates end
 * none (their first delivery did).
 */
export function createsByProject(events: readonly { eventType: string; projectId: string }[], outcomes: readonly unknown[]): Map<string, number> {
  const creates = new Map<string, number>();
  events.forEach((e, i) => {
    if (e.eventType === 'image.create' && outcomes[i] === 'applied') creates.set(e.projectId, (creates.get(e.projectId) ?? 0) + 1);
  });
  return creates;
}
