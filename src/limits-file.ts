import { readFileSync } from 'node:fs';
import { ConfigError } from './errors.js';
import { LimitsFile, type ProjectLimits } from './quota/limits.js';
import { firstIssue } from './zod-issues.js';

/**
 * QUOTA_LIMITS_FILE: per-project limits over QUOTA_LIMITS, read once when the configuration is
 * loaded, each error naming the file, the place in it and the shape expected.
 *
 * @example
 *   readLimitsFile('/etc/glance-quota-enforcer/limits.json');   // {"<project id>": {"image_count_total": 10}}
 */
export function readLimitsFile(path: string): Record<string, ProjectLimits> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`QUOTA_LIMITS_FILE: cannot read '${path}' as JSON (${(err as Error).message})`, { cause: err });
  }
  const parsed = LimitsFile.safeParse(raw);
  if (!parsed.success) {
    const issue = firstIssue(parsed.error);
    throw new ConfigError(`QUOTA_LIMITS_FILE: '${path}' at ${issue.path}: ${issue.message}; expected {"<project id>": {"image_count_total": 10}}`);
  }
  return parsed.data;
}
