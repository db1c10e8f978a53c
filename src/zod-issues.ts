/**
 * Zod issues as text, for every message that says why a value was refused: dead-letter reasons
 * (src/notification/parse.ts, whose text is asserted byte for byte), configuration errors, Lambda
 * event errors and the errors of the OpenStack adapters. Pure: no I/O, no import of the project.
 */
import type { z } from 'zod';

/** One issue, ready to quote. */
export interface IssueText {
  /** Where: the path joined with '.', after `prefix`; '(root)' for the value itself. */
  path: string;
  /** The first path segment as text (an environment variable, a top-level key), if any. */
  field: string | undefined;
  /** What zod says is wrong, e.g. `expected string, received undefined`. */
  message: string;
}

/** `[prefix, ...path]` joined with '.', empty parts left out; '(root)' when nothing is left. */
export function issuePath(path: readonly PropertyKey[], prefix = ''): string {
  return [prefix, ...path.map(String)].filter(Boolean).join('.') || '(root)';
}

/** The first issue of `error`; `(root)`/`invalid` for an error without one (zod never makes it). */
export function firstIssue(error: z.ZodError, prefix = ''): IssueText {
  const issue = error.issues[0];
  if (!issue) return { path: issuePath([], prefix), field: undefined, message: 'invalid' };
  return {
    path: issuePath(issue.path, prefix),
    field: issue.path.length > 0 ? String(issue.path[0]) : undefined,
    message: issue.message,
  };
}

export interface DescribeOptions {
  /** Put before every path, e.g. `payload` gives `payload.size: ...`. */
  prefix?: string;
  /** How many issues to name at most (default 3). */
  max?: number;
}

/** The first `max` issues as `path: message`, joined with '; ' (`(root): invalid` for none). */
export function describeIssues(error: z.ZodError, { prefix = '', max = 3 }: DescribeOptions = {}): string {
  const issues = error.issues.slice(0, max);
  if (issues.length === 0) {
    const only = firstIssue(error, prefix);
    return `${only.path}: ${only.message}`;
  }
  return issues.map((i) => `${issuePath(i.path, prefix)}: ${i.message}`).join('; ');
}
