import { mergeLimits, type LimitSource, type ProjectLimits } from './limits.js';

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
