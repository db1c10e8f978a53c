import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { CREATE_RATE, Resource, USAGE_RESOURCES, type UsageResource } from './resources.js';

/** N images per W seconds. */
export interface CreateRate {
  count: number;
  windowSeconds: number;
}

/**
 * A project's limits. An absent key is unlimited, and so is a negative value: oslo.limit reads an
 * unset limit as 0 and denies everything, a trap that would make us delete every new image.
 */
export type ProjectLimits = Partial<Record<UsageResource, number>> & { image_create_rate?: CreateRate };

const RATE = /^(\d+)\/(\d+)(s|m|h)?$/;
const UNIT_SECONDS = { s: 1, m: 60, h: 3600 } as const;

export function parseCreateRate(value: string): CreateRate {
  const m = RATE.exec(value.trim());
  if (!m) throw new ConfigError(`image_create_rate: expected N/W[s|m|h] such as 20/60s, got '${value}'`);
  const windowSeconds = Number(m[2]) * UNIT_SECONDS[(m[3] ?? 's') as keyof typeof UNIT_SECONDS];
  if (windowSeconds <= 0) throw new ConfigError(`image_create_rate: the window must be at least 1 second, got '${value}'`);
  return { count: Number(m[1]), windowSeconds };
}

/**
 * `image_count_total=100,image_size_total=10240,image_create_rate=20/60s` (QUOTA_LIMITS, replay's
 * --limit). Sizes are MiB, as in Keystone's registered limits for Glance.
 */
export function parseLimits(text: string, source = 'QUOTA_LIMITS'): ProjectLimits {
  const limits: ProjectLimits = {};
  for (const part of text
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)) {
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq).trim();
    const value = eq < 0 ? '' : part.slice(eq + 1).trim();
    if (eq < 0 || value === '') {
      throw new ConfigError(`${source}: expected RESOURCE=VALUE such as image_count_total=100, got '${part}'`);
    }
    if (name === 'image_create_rate') {
      limits.image_create_rate = parseCreateRate(value);
    } else if ((USAGE_RESOURCES as readonly string[]).includes(name)) {
      if (!/^-?\d+$/.test(value)) throw new ConfigError(`${source}: ${name} must be a whole number (negative = unlimited), got '${value}'`);
      limits[name as UsageResource] = Number(value);
    } else {
      throw new ConfigError(`${source}: unknown resource '${name}'; known: ${[...USAGE_RESOURCES, 'image_create_rate'].join(', ')}`);
    }
  }
  return limits;
}

export const CreateRateSchema = z.object({ count: z.number().int().nonnegative(), windowSeconds: z.number().int().positive() });

/** Per-project overrides (QUOTA_LIMITS_FILE): {"<project id>": {"image_count_total": 10, "image_create_rate": "5/60s"}}. */
export const LimitsFile = z.record(
  z.string().min(1),
  z
    .object({
      image_count_total: z.number().int(),
      image_count_uploading: z.number().int(),
      image_size_total: z.number().int(),
      image_stage_total: z.number().int(),
      image_create_rate: z.string().transform((v, ctx) => {
        try {
          return parseCreateRate(v);
        } catch (err) {
          ctx.addIssue({ code: 'custom', message: (err as Error).message });
          return z.NEVER;
        }
      }),
    })
    .partial()
    .strict(),
);
export type LimitsFile = z.infer<typeof LimitsFile>;

/** The later source wins, resource by resource. */
export function mergeLimits(...layers: (ProjectLimits | undefined)[]): ProjectLimits {
  return Object.assign({}, ...layers.filter(Boolean)) as ProjectLimits;
}

/** Where a project's limits come from; Keystone unified limits and the static table both fit. */
export interface LimitSource {
  limitsFor(projectId: string): Promise<ProjectLimits>;
  /**
   * The limits to act on for a project found over: read again at the source first, so that a
   * limit changed a moment ago acts at once (Keystone: rate-limited and shared by a burst of
   * callers), and `trusted` only when the configured source itself answered. Limits from
   * anywhere else (a fallback while the source fails, a table the latest read could not renew)
   * may be reported, never acted on. A source without one (static limits) is always current and
   * trusted.
   */
  confirm?(projectId: string): Promise<ConfirmedLimits>;
  /** Whether `confirm` would trust the source right now, and why not (readiness, the metric gqe_limits_trusted). */
  status?(): { trusted: boolean; detail: string };
}

/** What `LimitSource.confirm` answers: limits to act on, or the best known ones and why not. */
export type ConfirmedLimits = { trusted: true; limits: ProjectLimits } | { trusted: false; limits: ProjectLimits; reason: string };

/** `source.confirm`, or for a source without one, its current limits, trusted. */
export async function confirmLimits(source: LimitSource, projectId: string): Promise<ConfirmedLimits> {
  return source.confirm ? source.confirm(projectId) : { trusted: true, limits: await source.limitsFor(projectId) };
}

/**
 * The quota rule for where a limit comes from, as Glance's own quota module reads unified limits
 * (oslo.limit): the project's limit in Keystone, else the registered default, else the static one
 * (QUOTA_LIMITS, QUOTA_LIMITS_FILE). One value per resource, first found wins; a negative value
 * is unlimited. Names other than the five resources (another service's limits, typos) are ignored.
 * No I/O: `UnifiedLimits` (src/openstack/limits.ts) feeds it what Keystone listed.
 *
 * @example
 *   resolveLimits({ registered: [{ resource_name: 'image_count_total', default_limit: 100 }], project: [], createRateWindowSeconds: 60 });
 *   // { image_count_total: 100 }
 */
export function resolveLimits(input: {
  /** Keystone's registered (default) limits of the image service. */
  registered: readonly { resource_name: string; default_limit: number }[];
  /** Keystone's limits of this project. */
  project: readonly { resource_name: string; resource_limit: number }[];
  /** The static limits (QUOTA_LIMITS, QUOTA_LIMITS_FILE) of this project, already parsed. */
  fallback?: ProjectLimits;
  createRateWindowSeconds: number;
}): ProjectLimits {
  const out: ProjectLimits = {};
  for (const resource of Resource.options) {
    const value =
      input.project.find((l) => l.resource_name === resource)?.resource_limit ?? input.registered.find((l) => l.resource_name === resource)?.default_limit;
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
