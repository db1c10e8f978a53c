import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { describeIssues, firstIssue, issuePath } from '../../src/zod-issues.js';

const Schema = z.object({
  a: z.string(),
  b: z.object({ c: z.number() }),
  list: z.array(z.number()),
  d: z.boolean(),
});

function errorOf(value: unknown, schema: z.ZodType = Schema): z.ZodError {
  const parsed = schema.safeParse(value);
  if (parsed.success) throw new Error('expected a failure');
  return parsed.error;
}

describe('issuePath', () => {
  it('joins the prefix and the path with dots, leaves empty parts out, and names the root', () => {
    expect(issuePath(['b', 'c'])).toBe('b.c');
    expect(issuePath(['list', 1], 'payload')).toBe('payload.list.1');
    expect(issuePath([], 'payload')).toBe('payload');
    expect(issuePath([])).toBe('(root)');
    expect(issuePath(['', 'x'])).toBe('x');
    expect(issuePath([Symbol('s')])).toBe('Symbol(s)');
  });
});

describe('describeIssues', () => {
  const error = errorOf({ a: 1, b: { c: 'x' }, list: [1, 'two'], d: 'no' });

  it('names the first three issues as `path: message`, joined with "; "', () => {
    expect(describeIssues(error)).toBe(
      'a: Invalid input: expected string, received number; b.c: Invalid input: expected number, received string; list.1: Invalid input: expected number, received string',
    );
  });

  it('puts the prefix before every path and takes `max` issues', () => {
    expect(describeIssues(error, { prefix: 'payload', max: 2 })).toBe(
      'payload.a: Invalid input: expected string, received number; payload.b.c: Invalid input: expected number, received string',
    );
    expect(describeIssues(error, { max: 1 })).toBe('a: Invalid input: expected string, received number');
  });

  it('names the root for a value of the wrong type', () => {
    expect(describeIssues(errorOf('text'))).toBe('(root): Invalid input: expected object, received string');
  });

  it('says "invalid" at the root for an error without issues (zod never makes one)', () => {
    expect(describeIssues(new z.ZodError([]))).toBe('(root): invalid');
  });
});

describe('firstIssue', () => {
  it('gives the path, the first segment as the field, and the message', () => {
    expect(firstIssue(errorOf({ a: 'x', b: { c: 'x' }, list: [], d: true }))).toEqual({
      path: 'b.c',
      field: 'b',
      message: 'Invalid input: expected number, received string',
    });
  });

  it('has no field for the root', () => {
    expect(firstIssue(errorOf(null))).toMatchObject({ path: '(root)', field: undefined });
    expect(firstIssue(new z.ZodError([]))).toEqual({ path: '(root)', field: undefined, message: 'invalid' });
  });
});
