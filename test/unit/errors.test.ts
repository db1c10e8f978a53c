import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { ERROR_EXITS, errorExit } from '../../src/cli.js';
import { runCli as run } from '../support/cli.js';
import { loadConfig } from '../../src/config.js';
import { EnforcementFailedError } from '../../src/doors/lambda/batch.js';
import { EventShapeError } from '../../src/doors/lambda/events.js';
import { ProjectsDeferredError } from '../../src/doors/lambda/amazonmq.js';
import { ConfigError, EnforcerError, StoreDataError, StoreUnavailableError, LimitsUnavailableError, ProjectBusyError } from '../../src/errors.js';
import {
  CatalogError,
  KeystoneAuthError,
  OpenStackConfigError,
  OpenStackHttpError,
  OpenStackUnreachableError,
  ScopeUnavailableError,
} from '../../src/openstack/errors.js';
import { BrokerTimeoutError, BrokerUnavailableError } from '../../src/transport/amqp.js';

const cause = new Error('what went wrong underneath');

// replay of two made-up files throws an error whose message is not enough (main prints its stack)
// and one the CLI does not expect (main rethrows it).
vi.mock('../../src/doors/replay.js', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../../src/doors/replay.js')>();
  const { StoreDataError } = await import('../../src/errors.js');
  return {
    ...actual,
    replayFile: async (...args: Parameters<typeof actual.replayFile>) => {
      if (args[1] === '/unexpected') throw new Error('a bug, near postgres://gqe:s3cret@db/gqe');
      if (args[1] !== '/store-data-error') return actual.replayFile(...args);
      const underneath = new Error('value too long for postgres://gqe:s3cret@db/gqe');
      throw new StoreDataError('PostgreSQL refused the batch (postgres://gqe:s3cret@db/gqe)', { cause: underneath });
    },
  };
});

/** One of each error class, made with `cause` wherever its constructor takes one. */
const made: { cls: abstract new (...args: never[]) => EnforcerError; error: EnforcerError; wraps: boolean }[] = [
  { cls: ConfigError, error: new ConfigError('m', { cause }), wraps: true },
  { cls: StoreUnavailableError, error: new StoreUnavailableError('m', { cause }), wraps: true },
  { cls: StoreDataError, error: new StoreDataError('m', { cause }), wraps: true },
  { cls: OpenStackConfigError, error: new OpenStackConfigError('OS_CACERT', 'm', { cause }), wraps: true },
  { cls: KeystoneAuthError, error: new KeystoneAuthError(401, 'project', 'm'), wraps: false },
  { cls: ScopeUnavailableError, error: new ScopeUnavailableError('system', 'm'), wraps: false },
  { cls: CatalogError, error: new CatalogError('m', { cause }), wraps: true },
  { cls: OpenStackHttpError, error: new OpenStackHttpError('glance', 'GET', 'http://glance/v2/images', 500, 'm'), wraps: false },
  { cls: OpenStackUnreachableError, error: new OpenStackUnreachableError('keystone', 'POST', 'http://keystone/v3', 4, 'm', { cause }), wraps: true },
  { cls: BrokerTimeoutError, error: new BrokerTimeoutError('m', { cause }), wraps: true },
  { cls: BrokerUnavailableError, error: new BrokerUnavailableError('m', { cause }), wraps: true },
  { cls: EnforcementFailedError, error: new EnforcementFailedError([{ projectId: 'p1', error: cause }]), wraps: false },
  { cls: EventShapeError, error: new EventShapeError('m', { cause }), wraps: true },
  { cls: LimitsUnavailableError, error: new LimitsUnavailableError('m', { cause }), wraps: true },
  { cls: ProjectBusyError, error: new ProjectBusyError('p1', 5_000), wraps: false },
  { cls: ProjectsDeferredError, error: new ProjectsDeferredError(['p1']), wraps: false },
];

/** Every `class X extends Y` under src/, by name, with what it extends. */
function classesInSrc(): { name: string; base: string }[] {
  const walk = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
  return walk(resolve(import.meta.dirname, '..', '..', 'src')).flatMap((file) =>
    [...readFileSync(file, 'utf8').matchAll(/\bclass (\w+) extends (\w+)/g)].map((m) => ({ name: m[1]!, base: m[2]! })),
  );
}

describe('the error classes', () => {
  it('all extend EnforcerError: no other class under src/ extends Error itself', () => {
    const classes = classesInSrc();
    expect(classes.filter((c) => c.base === 'Error').map((c) => c.name)).toEqual(['EnforcerError']);
    // Every subclass of EnforcerError under src/ is in `made`, so the checks below see them all.
    const errorClasses = classes
      .filter((c) => c.base === 'EnforcerError')
      .map((c) => c.name)
      .sort();
    expect(errorClasses).toEqual(made.map((m) => m.cls.name).sort());
  });

  it.each(made.map((m) => [m.cls.name, m] as const))('%s is an EnforcerError and an Error, named after its class', (_, { cls, error }) => {
    expect(error).toBeInstanceOf(EnforcerError);
    expect(error).toBeInstanceOf(Error);
    expect(error).toBeInstanceOf(cls);
    expect(error.name).toBe(cls.name);
    expect(String(error)).toMatch(new RegExp(`^${cls.name}: `));
    expect(error.code).toMatch(/^[A-Z][A-Z_]*$/);
  });

  it('each has its own code', () => {
    const codes = made.map((m) => m.error.code);
    expect(new Set(codes).size).toBe(codes.length);
  });

  it('keeps the error it wraps as `cause`, and its message as given', () => {
    for (const { error } of made.filter((m) => m.wraps)) {
      expect(error.cause).toBe(cause);
      expect(error.message).toBe('m');
    }
    expect(new ConfigError('m')).not.toHaveProperty('cause');
  });

  it('keep their own fields', () => {
    expect(new OpenStackConfigError('OS_AUTH_URL', 'm')).toMatchObject({ variable: 'OS_AUTH_URL', code: 'OPENSTACK_CONFIG' });
    expect(new OpenStackHttpError('glance', 'DELETE', 'http://g/v2/images/x', 409, 'm')).toMatchObject({ service: 'glance', method: 'DELETE', status: 409 });
    expect(new ProjectBusyError('p1', 5_000)).toMatchObject({ projectId: 'p1', retryAfterMs: 5_000, code: 'PROJECT_BUSY' });
    expect(new EnforcementFailedError([{ projectId: 'p1', error: cause }]).message).toBe('enforcement failed for 1 project(s): p1: what went wrong underneath');
  });

  it('a file that cannot be read becomes a ConfigError that wraps the reason', () => {
    const error = (() => {
      try {
        loadConfig({ QUOTA_LIMITS_FILE: '/nonexistent/limits.json' });
      } catch (err) {
        return err;
      }
    })();
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).cause).toMatchObject({ code: 'ENOENT' });
  });
});

describe('ERROR_EXITS', () => {
  it('has an entry for every code, and no entry for a code no error has', () => {
    const codes = made.map((m) => m.error.code).sort();
    expect(
      Object.keys(ERROR_EXITS)
        .filter((k) => /^[A-Z_]+$/.test(k) && k !== 'ENOENT')
        .sort(),
    ).toEqual(codes);
  });

  it('exits 2 for what the operator must fix, 1 for the rest', () => {
    const byExit = (exit: number) =>
      Object.entries(ERROR_EXITS)
        .filter(([, e]) => e.exit === exit)
        .map(([code]) => code)
        .sort();
    expect(byExit(2)).toEqual(['CONFIG', 'ERR_PARSE_ARGS_*', 'OPENSTACK_CONFIG', 'SCOPE_UNAVAILABLE']);
    expect(byExit(1)).toContain('ENOENT');
    expect(byExit(1)).toContain('STORE_UNAVAILABLE');
  });

  it("classifies by code: errors of the enforcer, node's parseArgs and missing files; nothing else", () => {
    expect(errorExit(new ScopeUnavailableError('system', 'm'))).toEqual({ exit: 2, messageOnly: true });
    expect(errorExit(new KeystoneAuthError(401, 'project', 'm'))).toEqual({ exit: 1, messageOnly: true });
    expect(errorExit(new StoreDataError('m'))).toEqual({ exit: 1, messageOnly: false });
    expect(errorExit(Object.assign(new TypeError('m'), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' }))).toEqual({ exit: 2, messageOnly: true });
    expect(errorExit(Object.assign(new Error('m'), { code: 'ENOENT' }))).toEqual({ exit: 1, messageOnly: true });
    // A look-alike is not one: only the class carries the code that counts.
    expect(errorExit(Object.assign(new Error('m'), { name: 'ConfigError', code: 'CONFIG' }))).toBeUndefined();
    expect(errorExit(new Error('m'))).toBeUndefined();
    expect(errorExit(undefined)).toBeUndefined();
    expect(errorExit('text')).toBeUndefined();
  });
});

describe('main, on an error', () => {
  it.each([
    ['a ConfigError', ['replay'], {}, 2, 'replay: expected exactly one FILE, e.g. replay notifications.jsonl\n'],
    ['an unknown flag (ERR_PARSE_ARGS_UNKNOWN_OPTION)', ['status', '--nope'], {}, 2, /^Unknown option '--nope'/],
    ['a missing file (ENOENT)', ['replay', '/nonexistent/file.jsonl'], {}, 1, /ENOENT.*\/nonexistent\/file\.jsonl/],
    [
      'a store it cannot reach (STORE_UNAVAILABLE)',
      ['actions'],
      { STORE_URL: 'postgres://gqe:pw@127.0.0.1:9/gqe' },
      1,
      /^STORE_URL: cannot connect to PostgreSQL at postgres:\/\/gqe:\*\*\*@127\.0\.0\.1:9\/gqe/,
    ],
    [
      'a token scope the credentials cannot give (SCOPE_UNAVAILABLE)',
      ['reconcile', '--dry-run'],
      {
        OS_AUTH_URL: 'http://127.0.0.1:9/v3',
        OS_USERNAME: 'enforcer',
        OS_PASSWORD: 'enforcer-pass',
        OS_USER_DOMAIN_NAME: 'Default',
        OS_PROJECT_NAME: 'service',
        OS_PROJECT_DOMAIN_NAME: 'Default',
        STORE_URL: 'memory://',
      },
      2,
      /OS_SYSTEM_SCOPE is not set/,
    ],
  ])('%s: exits with its code and prints the message alone', async (_, args, env, exit, message) => {
    const { code, stdout, stderr } = await run(args, env);
    expect(code).toBe(exit);
    expect(stdout).toBe('');
    expect(stderr).toMatch(message);
    expect(stderr).not.toMatch(/\n\s+at |enforcer-pass|:pw@/);
  });

  it('an error whose message is not enough (STORE_DATA): exits 1 and prints the stack of it and of its cause, scrubbed', async () => {
    const { code, stderr } = await run(['replay', '/store-data-error']);
    expect(code).toBe(1);
    expect(stderr).toMatch(/^StoreDataError: PostgreSQL refused the batch \(postgres:\/\/gqe:\*\*\*@db\/gqe\)\n\s+at /);
    expect(stderr).toMatch(/\ncaused by: Error: value too long for postgres:\/\/gqe:\*\*\*@db\/gqe\n\s+at /);
    expect(stderr).not.toContain('s3cret');
  });

  it('rethrows an error it does not expect, its message scrubbed', async () => {
    const error = await run(['replay', '/unexpected']).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(Error);
    expect((error as Error).message).toBe('a bug, near postgres://gqe:***@db/gqe');
  });
});
