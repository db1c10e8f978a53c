import { mergeLimits, type ProjectLimits } from './limits.js';

/** Where a project's limits come from; Keystone unified limits and the static table both fit. */
export interface LimitSource {
  limitsFor(projectId: string): Promise<ProjectLimits>;
  /**
   * The limits of a project found over, read again at the source first, so that a limit changed a
   * moment ago acts at once (Keystone: rate-limited and shared by a burst of callers). A source
   * without one has nothing to re-read: `limitsFor` is already current.
   */
  refresh?(projectId: string): Promise<ProjectLimits>;
}

/** QUOTA_LIMITS for everyone, QUOTA_LIMITS_FILE per project on top, resource by resource. */
export class StaticLimits implements LimitSource {
  constructor(
    private readonly defaults: ProjectLimits,
    private readonly perProject: Readonly<Record<string, ProjectLimits>> = {},
  ) {}

  async limitsFor(projectId: string): Promise<ProjectLimits> {
    return mergeLimits(this.defaults, this.perProject[projectId]);
  }
}
