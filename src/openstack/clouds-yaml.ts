import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { OpenStackConfigError } from './errors.js';

/**
 * clouds.yaml and secure.yaml, found and read as openstacksdk does (its search path, `-` and `_`
 * alike in keys, secure.yaml merged over clouds.yaml), for the one cloud OS_CLOUD names.
 * credentials.ts says which key stands for which OS_* variable and lays the environment over it.
 */

/** A cloud's settings by the variable each stands for, and where each came from (for messages). */
export interface CloudSettings<V extends string> {
  values: Partial<Record<V, string>>;
  origin: Partial<Record<V, string>>;
}

/** Where clouds.yaml is looked for, and what to do about a key that is not read. */
export interface CloudsYamlOptions {
  /** Defaults to `process.cwd()`; the first directory searched for clouds.yaml. */
  cwd?: string;
  /** Defaults to `os.homedir()`. */
  home?: string;
  /** Replaces the whole clouds.yaml / secure.yaml search path (tests). */
  searchDirs?: readonly string[];
  /** A clouds.yaml key that is not read, and why; default: a Node process warning on stderr. */
  onWarning?: (message: string) => void;
}

/**
 * Directories openstacksdk searches for clouds.yaml and secure.yaml, in order (Linux, as its
 * `appdirs` computes them): the working directory, the user's config dir, `~/.config/openstack`,
 * `$XDG_CONFIG_DIRS/openstack` (default /etc/xdg/openstack), then /etc/openstack.
 */
export function cloudsSearchDirs(env: NodeJS.ProcessEnv, options: CloudsYamlOptions = {}): string[] {
  const home = options.home ?? homedir();
  const cwd = options.cwd ?? process.cwd();
  const xdgConfigHome = env.XDG_CONFIG_HOME || path.join(home, '.config');
  const xdgConfigDirs = (env.XDG_CONFIG_DIRS || '/etc/xdg').split(':').filter(Boolean);
  const dirs = [
    cwd,
    path.join(xdgConfigHome, 'openstack'),
    path.join(home, '.config', 'openstack'),
    ...xdgConfigDirs.map((d) => path.join(d, 'openstack')),
    '/etc/openstack',
  ];
  return [...new Set(dirs)];
}

/** clouds.yaml candidates, first existing one wins: OS_CLIENT_CONFIG_FILE, then each dir x .yaml/.yml/.json. */
export function cloudsFileCandidates(env: NodeJS.ProcessEnv, dirs: readonly string[], base: 'clouds' | 'secure'): string[] {
  const override = base === 'clouds' ? env.OS_CLIENT_CONFIG_FILE : env.OS_CLIENT_SECURE_FILE;
  const files = dirs.flatMap((d) => ['.yaml', '.yml', '.json'].map((suffix) => path.join(d, base + suffix)));
  return override ? [override, ...files] : files;
}

/** Deep merge of secure.yaml over clouds.yaml, as openstacksdk's `merge_clouds`: nested maps merge, anything else replaces. */
export function mergeClouds(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : over;
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    out[key] = isPlainObject(value) && isPlainObject(out[key]) ? mergeClouds(out[key], value) : value;
  }
  return out;
}

/**
 * clouds.yaml keys the enforcer has no use for and that change nothing it does. Any other key it
 * does not read is reported (LoadCredentialsOptions.onWarning), never silently dropped: an operator
 * who wrote it meant something by it.
 */
const IGNORED_CLOUD_KEYS = /^(\w+_api_version|verify)$/;

/** Why a clouds.yaml key that Kolla-Ansible or OpenStack-Helm write is not read. */
const UNREAD_CLOUD_KEYS: Readonly<Record<string, string>> = {
  identity_interface: 'the enforcer reaches Keystone only at auth.auth_url (set auth_url to the endpoint of that interface)',
  'auth.domain_name': 'set auth.user_domain_name and auth.project_domain_name (or OS_USER_DOMAIN_NAME and OS_PROJECT_DOMAIN_NAME) instead',
  'auth.domain_id': 'set auth.user_domain_id and auth.project_domain_id (or OS_USER_DOMAIN_ID and OS_PROJECT_DOMAIN_ID) instead',
  insecure: 'TLS verification cannot be turned off; set cacert (or OS_CACERT) to the CA of the endpoints',
};

/**
 * The settings cloud `cloud` gives, as the variables they stand for (`keys`: clouds.yaml key ->
 * variable), each with the file and key it came from; a key that is not read is reported through
 * `onWarning`, never silently dropped. Throws OpenStackConfigError naming OS_CLOUD (or the file
 * variable) and the fix.
 */
export function readCloud<V extends string>(
  cloud: string,
  env: NodeJS.ProcessEnv,
  options: CloudsYamlOptions,
  keys: Readonly<Record<string, V>>,
): CloudSettings<V> {
  const sourced: CloudSettings<V> = { values: {}, origin: {} };
  const dirs = options.searchDirs ?? cloudsSearchDirs(env, options);
  if (env.OS_CLIENT_CONFIG_FILE && !existsSync(env.OS_CLIENT_CONFIG_FILE)) {
    // openstacksdk would silently go on down the search path; a named file that is not there is a typo.
    throw new OpenStackConfigError(
      'OS_CLIENT_CONFIG_FILE',
      `OS_CLIENT_CONFIG_FILE: '${env.OS_CLIENT_CONFIG_FILE}' does not exist; fix the path or unset it to search ${dirs.join(', ')}`,
    );
  }
  const cloudsFile = cloudsFileCandidates(env, dirs, 'clouds').find((f) => existsSync(f));
  if (!cloudsFile) {
    throw new OpenStackConfigError(
      'OS_CLOUD',
      `OS_CLOUD: cloud '${cloud}' asked for, but no clouds.yaml found in ${dirs.join(', ')}; create one there or set OS_CLIENT_CONFIG_FILE`,
    );
  }
  const secureFile = cloudsFileCandidates(env, dirs, 'secure').find((f) => existsSync(f));
  const secureConfig = secureFile ? readCloudsFile(secureFile) : undefined;
  const config = mergeClouds(readCloudsFile(cloudsFile), secureConfig);
  const clouds = isPlainObject(config) && isPlainObject(config.clouds) ? config.clouds : {};
  const entry = clouds[cloud];
  if (!isPlainObject(entry)) {
    const known = Object.keys(clouds);
    throw new OpenStackConfigError(
      'OS_CLOUD',
      `OS_CLOUD: no cloud '${cloud}' in ${cloudsFile}${secureFile ? ` (merged with ${secureFile})` : ''}; ${known.length ? `it has: ${known.join(', ')}` : 'it defines no clouds'}`,
    );
  }
  const flat = flatten(normaliseKeys(entry));
  const fromSecure = flatten(normaliseKeys(cloudEntry(secureConfig, cloud)));
  if (flat.verify === 'false') {
    throw new OpenStackConfigError(
      'OS_CACERT',
      `OS_CLOUD: cloud '${cloud}' in ${cloudsFile} sets verify: false, which the enforcer does not support; remove it and set cacert (or OS_CACERT) to the CA of the endpoints`,
    );
  }
  for (const [key, name] of Object.entries(keys) as [string, V][]) {
    const value = flat[key];
    if (value !== undefined && value !== '') {
      sourced.values[name] = value;
      sourced.origin[name] = `${key in fromSecure ? secureFile : cloudsFile}, cloud '${cloud}', key ${key}`;
    }
  }
  const warn = options.onWarning ?? ((message: string) => process.emitWarning(message, 'CloudsYamlWarning'));
  for (const key of Object.keys(flat)) {
    if (key in keys || IGNORED_CLOUD_KEYS.test(key)) continue;
    // Never the value: an unknown key may well hold a secret.
    const why = UNREAD_CLOUD_KEYS[key] ?? 'the enforcer does not read it (README lists the keys it reads)';
    warn(`${cloudsFile}, cloud '${cloud}': key ${key} is not used: ${why}`);
  }
  if (flat.identity_api_version !== undefined && flat.identity_api_version !== '3') {
    warn(`${cloudsFile}, cloud '${cloud}': identity_api_version ${flat.identity_api_version} is not used: the enforcer speaks Keystone v3 only`);
  }
  return sourced;
}

function cloudEntry(config: unknown, cloud: string): unknown {
  return isPlainObject(config) && isPlainObject(config.clouds) ? config.clouds[cloud] : undefined;
}

function readCloudsFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new OpenStackConfigError('OS_CLOUD', `OS_CLOUD: cannot read ${file} (${code}); fix its permissions or set OS_CLIENT_CONFIG_FILE to another file`, {
      cause: error,
    });
  }
  try {
    // YAML 1.2 is a superset of JSON, so clouds.json parses here too.
    return parseYaml(text);
  } catch (error) {
    // The parser's message quotes the offending line, which may hold a password: keep only its position.
    const at = (error as { linePos?: [{ line: number; col: number }] }).linePos?.[0];
    throw new OpenStackConfigError('OS_CLOUD', `OS_CLOUD: ${file} is not valid YAML${at ? ` (line ${at.line}, column ${at.col})` : ''}; fix the file`);
  }
}

/** openstacksdk treats `auth-url` and `auth_url` alike. */
function normaliseKeys(value: unknown): unknown {
  if (!isPlainObject(value)) return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k.replace(/-/g, '_'), normaliseKeys(v)]));
}

/** Scalars only, as strings (a numeric password in YAML is still a password); lists are skipped. */
function flatten(value: unknown, prefix = ''): Record<string, string> {
  const out: Record<string, string> = {};
  if (!isPlainObject(value)) return out;
  for (const [key, v] of Object.entries(value)) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (isPlainObject(v)) Object.assign(out, flatten(v, name));
    else if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[name] = String(v);
  }
  return out;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
