/**
 * `serverless package` (osls) offline, and the unpacking of its artifacts: what the packaging
 * test and the cold-start bench both run, exactly as docs/serverless.md tells an operator to.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FUNCTION_NAMES } from './build-functions.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..');

/** docs/serverless.md's `--param`s, with placeholders. */
export const PLACEHOLDER_PARAMS: Record<string, string> = {
  mqBrokerArn: 'arn:aws:mq:eu-west-1:123456789012:broker:glance:b-0f3c2a1e-1111-2222-3333-444455556666',
  mqSecretArn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:gqe-mq-AbCdEf',
  subnetIds: 'subnet-0a1b,subnet-0c2d',
  securityGroupIds: 'sg-0e3f',
};

/** A deploy shell with placeholders and nothing that could reach AWS. */
export const PLACEHOLDER_ENV: Record<string, string> = {
  STORE_URL: 'rediss://placeholder.invalid:6379/0',
  OS_AUTH_URL: 'https://keystone.invalid:5000/v3',
};

/**
 * Runs `serverless package --stage ci` into `out` with `env` as the whole environment (no AWS
 * credentials or profile of the machine's), and returns the paths of the function artifacts.
 * The bundles (dist/lambda) must have been built.
 */
export async function serverlessPackage(
  out: string,
  env: Record<string, string> = PLACEHOLDER_ENV,
  params = PLACEHOLDER_PARAMS,
): Promise<Record<string, string>> {
  for (const name of FUNCTION_NAMES) {
    if (!existsSync(join(ROOT, 'dist', 'lambda', name, 'index.mjs'))) {
      throw new Error(
        `dist/lambda/${name}/index.mjs is missing: the package holds the function bundles; run \`npm run build:functions\` (npm ci runs it) first`,
      );
    }
  }
  const shell = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? tmpdir(), SLS_TELEMETRY_DISABLED: '1', SLS_NOTIFICATIONS_MODE: 'off', ...env };
  const args = ['package', '--stage', 'ci', '--region', 'eu-west-1', '--package', out, ...Object.entries(params).map(([k, v]) => `--param=${k}=${v}`)];
  try {
    await run(process.execPath, [join(ROOT, 'node_modules', 'osls', 'bin', 'serverless.js'), ...args], {
      cwd: ROOT,
      env: shell,
      timeout: 150_000,
      maxBuffer: 16 * 1024 * 1024,
    });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`serverless package failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
  return Object.fromEntries(FUNCTION_NAMES.map((name) => [name, join(out, `${name}.zip`)]));
}

/** Unzips an artifact as Lambda does into /var/task (python3's zipfile: no `unzip` needed). */
export async function unzip(zip: string, dir: string): Promise<void> {
  await run('python3', ['-m', 'zipfile', '-e', zip, dir]);
}
