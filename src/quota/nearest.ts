import { isUnlimited } from './decide.js';
import type { ProjectLimits } from './limits.js';
import { USAGE_RESOURCES, type Usage } from './resources.js';

/**
 * How near a project is to its limits: the largest usage / limit over the resources it has a
 * limit on (1 is at the limit, above 1 over it). A limit of 0 is reached before the first image,
 * so it counts as full (1), or as infinitely over once anything is used. `undefined` when every
 * resource is unlimited: such a project is never near anything.
 *
 * @example
 *   fullness({ image_count_total: 10, ... }, { image_count_total: 5 }) // 2
 */
export function fullness(usage: Usage, limits: ProjectLimits): number | undefined {
  let fullest: number | undefined;
  for (const r of USAGE_RESOURCES) {
    const limit = limits[r];
    if (isUnlimited(limit)) continue;
    const f = limit > 0 ? usage[r] / limit : usage[r] > 0 ? Infinity : 1;
    if (fullest === undefined || f > fullest) fullest = f;
  }
  return fullest;
}

/** A project as `status` and the gauges rank it. */
export interface ProjectFill {
  projectId: string;
  usage: Usage;
  limits: ProjectLimits;
  over: readonly string[];
}

/** What orders a project among the others: over a limit or not, then its fullness (-1: no limit). */
interface Rank {
  projectId: string;
  over: boolean;
  fullness: number;
}

function rankOf(p: ProjectFill): Rank {
  return { projectId: p.projectId, over: p.over.length > 0, fullness: fullness(p.usage, p.limits) ?? -1 };
}

function byRank(a: Rank, b: Rank): number {
  if (a.over !== b.over) return a.over ? -1 : 1;
  if (a.fullness !== b.fullness) return b.fullness > a.fullness ? 1 : -1;
  return a.projectId < b.projectId ? -1 : a.projectId > b.projectId ? 1 : 0;
}

/**
 * Nearest their limits first: projects over a limit before those that are not (a project over
 * `image_create_rate` alone can be far from every count and size), then the fullest, projects with
 * no limit at all last; ties by project id, so the order is the same on every run.
 */
export function nearestFirst(a: ProjectFill, b: ProjectFill): number {
  return byRank(rankOf(a), rankOf(b));
}

type Kept = Rank & { fill: ProjectFill };

/**
 * The N projects nearest or over their limits, kept in memory as decisions come, so that what
 * the gauges export never grows with the number of projects. `observe` takes one decision;
 * `replaceAll` a whole reconcile pass, after which the set is exact. Between passes a project
 * enters when a decision puts it above the least of the N and stays until one nearer displaces
 * it, so a project whose usage fell keeps its place (with its new figures) until the next pass.
 *
 * @example
 *   const nearest = new NearestProjects(100);
 *   const left = nearest.observe(report);          // ids whose gauges must leave the registry
 *   nearest.replaceAll(pass.projects, failedIds);  // after a complete reconcile pass
 */
export class NearestProjects {
  private readonly kept = new Map<string, Kept>();

  constructor(readonly size: number) {}

  /** Takes one decision; returns the project ids that left the set. */
  observe(p: ProjectFill): string[] {
    if (this.size <= 0) return [];
    const entry: Kept = { ...rankOf(p), fill: p };
    if (this.kept.has(p.projectId) || this.kept.size < this.size) {
      this.kept.set(p.projectId, entry);
      return [];
    }
    const least = this.least();
    if (byRank(entry, least) >= 0) return [];
    this.kept.delete(least.projectId);
    this.kept.set(p.projectId, entry);
    return [least.projectId];
  }

  /**
   * A whole pass: the N nearest of `projects` replace the set, except that projects in `keep`
   * (those the pass could not decide) keep their place and figures. Returns the ids that left.
   */
  replaceAll(projects: Iterable<ProjectFill>, keep: ReadonlySet<string> = new Set()): string[] {
    const all = [...this.kept.values()].filter((k) => keep.has(k.projectId));
    const seen = new Set(all.map((k) => k.projectId));
    for (const p of projects) if (!seen.has(p.projectId)) all.push({ ...rankOf(p), fill: p });
    const top = all.sort(byRank).slice(0, Math.max(0, this.size));
    const stay = new Set(top.map((k) => k.projectId));
    const left = [...this.kept.keys()].filter((id) => !stay.has(id));
    this.kept.clear();
    for (const k of top) this.kept.set(k.projectId, k);
    return left;
  }

  has(projectId: string): boolean {
    return this.kept.has(projectId);
  }

  /** Nearest first. */
  list(): ProjectFill[] {
    return [...this.kept.values()].sort(byRank).map((k) => k.fill);
  }

  /** The last of the N: a scan of N ranks computed once each, on a decision that may displace it. */
  private least(): Kept {
    let least: Kept | undefined;
    for (const k of this.kept.values()) if (!least || byRank(k, least) > 0) least = k;
    return least!;
  }
}
