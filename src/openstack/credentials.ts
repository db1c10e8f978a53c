import { readFileSync } from 'node:fs';
import { readCloud, type CloudSettings, type CloudsYamlOptions } from './clouds-yaml.js';
import type { Credentials, DomainRef, Identity, ProjectRef } from './identity.js';
import { ALTERNATIVES, CLOUD_KEYS, OPENSTACK_ENV_VARS, OpenStackSettings, SECRET_VARS, type OpenStackEnvVar } from './os-variables.js';
import { OpenStackConfigError, scrub } from './errors.js';
import { firstIssue } from '../zod-issues.js';

/**
 * Where the enforcer's OpenStack identity comes from: the same OS_* variables and clouds.yaml that
 * the `openstack` CLI reads, so an operator can test them with `openstack token issue` first.
 *
 * One identity gives the enforcer up to two tokens (see keystone.ts): a project-scoped one
 * (OS_PROJECT_NAME / OS_PROJECT_ID) for Glance, and a system-scoped one (OS_SYSTEM_SCOPE=all) for
 * reading every project's unified limits. Unlike the CLI, setting both is normal here.
 */

export type LoadCredentialsOptions = CloudsYamlOptions;

/** The settings so far; `origin` says where a value came from when it was not the environment. */
type Sourced = CloudSettings<OpenStackEnvVar>;

/**
 * Reads the OpenStack identity from the environment, and from clouds.yaml when OS_CLOUD is set.
 * Environment variables win over clouds.yaml, key by key. Throws `OpenStackConfigError` naming the
 * variable and the fix; no message ever contains a password or secret.
 *
 * @example
 *   // OS_AUTH_URL=https://keystone:5000/v3 OS_USERNAME=enforcer OS_PASSWORD=... OS_USER_DOMAIN_NAME=Default
 *   // OS_PROJECT_NAME=service OS_PROJECT_DOMAIN_NAME=Default OS_SYSTEM_SCOPE=all
 *   const credentials = loadCredentials(process.env);
 *   const keystone = new KeystoneClient(credentials);
 */
export function loadCredentials(env: NodeJS.ProcessEnv = process.env, options: LoadCredentialsOptions = {}): Credentials {
  const cloud = nonBlank(env.OS_CLOUD);
  const sourced: Sourced = cloud ? readCloud(cloud, env, options, CLOUD_KEYS) : { values: {}, origin: {} };
  for (const [set, replaced] of ALTERNATIVES) {
    if (set.some((name) => nonBlank(env[name]) !== undefined)) {
      for (const name of replaced) {
        delete sourced.values[name];
        delete sourced.origin[name];
      }
    }
  }
  for (const name of OPENSTACK_ENV_VARS) {
    const value = nonBlank(env[name]);
    if (value !== undefined) {
      sourced.values[name] = value;
      delete sourced.origin[name];
    }
  }

  const parsed = OpenStackSettings.safeParse(sourced.values);
  if (!parsed.success) {
    const issue = firstIssue(parsed.error);
    const name = String(issue.field) as OpenStackEnvVar;
    const raw = sourced.values[name];
    const got = SECRET_VARS.has(name) || raw === undefined ? '' : `, got '${shownValue(raw, sourced)}'`;
    throw new OpenStackConfigError(name, `${label(name, sourced)}: ${issue.message}${got}`);
  }
  return buildCredentials(parsed.data, sourced);
}

function buildCredentials(s: OpenStackSettings, sourced: Sourced): Credentials {
  const where = (name: OpenStackEnvVar) => label(name, sourced);
  if (!s.OS_AUTH_URL) {
    throw new OpenStackConfigError(
      'OS_AUTH_URL',
      'OS_AUTH_URL: not set; set it to the Keystone URL, e.g. https://keystone.example.com:5000/v3 (or set OS_CLOUD to a cloud in clouds.yaml)',
    );
  }
  const authUrl = keystoneV3Url(s.OS_AUTH_URL, where('OS_AUTH_URL'));

  const hasPassword = Boolean(s.OS_USERNAME || s.OS_USER_ID || s.OS_PASSWORD);
  const hasAppCred = Boolean(s.OS_APPLICATION_CREDENTIAL_ID || s.OS_APPLICATION_CREDENTIAL_SECRET);
  let method: Identity['method'];
  if (s.OS_AUTH_TYPE) {
    method = s.OS_AUTH_TYPE === 'v3applicationcredential' ? 'application_credential' : 'password';
  } else if (hasPassword && hasAppCred) {
    throw new OpenStackConfigError(
      'OS_AUTH_TYPE',
      'OS_AUTH_TYPE: both a password (OS_USERNAME/OS_PASSWORD) and an application credential (OS_APPLICATION_CREDENTIAL_ID/_SECRET) are set; ' +
        'unset one of them, or set OS_AUTH_TYPE=password or OS_AUTH_TYPE=v3applicationcredential',
    );
  } else if (hasAppCred) {
    method = 'application_credential';
  } else if (hasPassword) {
    method = 'password';
  } else {
    throw new OpenStackConfigError(
      'OS_USERNAME',
      'OS_USERNAME: no identity set; set OS_USERNAME, OS_PASSWORD and OS_USER_DOMAIN_NAME, or OS_APPLICATION_CREDENTIAL_ID and OS_APPLICATION_CREDENTIAL_SECRET',
    );
  }

  const regionAndTransport = {
    ...(s.OS_REGION_NAME ? { regionName: s.OS_REGION_NAME } : {}),
    interface: s.OS_INTERFACE ?? 'public',
    ...readCa(s.OS_CACERT, where('OS_CACERT')),
    ...(s.GLANCE_URL ? { glanceUrl: s.GLANCE_URL.replace(/\/+$/, '') } : {}),
  } as const;

  if (method === 'application_credential') {
    if (!s.OS_APPLICATION_CREDENTIAL_ID) {
      throw new OpenStackConfigError(
        'OS_APPLICATION_CREDENTIAL_ID',
        'OS_APPLICATION_CREDENTIAL_ID: not set; set it to the id printed by `openstack application credential create` (names are not supported)',
      );
    }
    if (!s.OS_APPLICATION_CREDENTIAL_SECRET) {
      throw new OpenStackConfigError(
        'OS_APPLICATION_CREDENTIAL_SECRET',
        'OS_APPLICATION_CREDENTIAL_SECRET: not set; set it to the secret given when the application credential was created',
      );
    }
    if (s.OS_SYSTEM_SCOPE) {
      throw new OpenStackConfigError(
        'OS_SYSTEM_SCOPE',
        `${where('OS_SYSTEM_SCOPE')}: an application credential is bound to the project it was created in and cannot give a system-scoped token; ` +
          'unset OS_SYSTEM_SCOPE (limits then come from the static fallback), or use a password identity with reader on system scope',
      );
    }
    // The credential carries its own project; OS_PROJECT_* left over from an openrc are ignored,
    // because Keystone rejects an explicit scope on application-credential auth.
    return {
      authUrl,
      identity: { method, id: s.OS_APPLICATION_CREDENTIAL_ID, secret: s.OS_APPLICATION_CREDENTIAL_SECRET },
      ...regionAndTransport,
    };
  }

  if (!s.OS_PASSWORD) {
    throw new OpenStackConfigError(
      'OS_PASSWORD',
      `OS_PASSWORD: not set; set it to the password of ${s.OS_USERNAME ? `user '${s.OS_USERNAME}'` : 'OS_USER_ID'}`,
    );
  }
  let user: Extract<Identity, { method: 'password' }>['user'];
  if (s.OS_USER_ID) {
    user = { id: s.OS_USER_ID };
  } else if (s.OS_USERNAME) {
    const domain = domainRef(s.OS_USER_DOMAIN_ID, s.OS_USER_DOMAIN_NAME);
    if (!domain) {
      throw new OpenStackConfigError(
        'OS_USER_DOMAIN_NAME',
        `OS_USER_DOMAIN_NAME: not set; a user name is unique only within a domain, so set OS_USER_DOMAIN_NAME (e.g. Default) or OS_USER_DOMAIN_ID, or use OS_USER_ID`,
      );
    }
    user = { name: s.OS_USERNAME, domain };
  } else {
    throw new OpenStackConfigError('OS_USERNAME', 'OS_USERNAME: not set; set OS_USERNAME (with OS_USER_DOMAIN_NAME) or OS_USER_ID');
  }

  let project: ProjectRef | undefined;
  if (s.OS_PROJECT_ID) {
    project = { id: s.OS_PROJECT_ID };
  } else if (s.OS_PROJECT_NAME) {
    const domain = domainRef(s.OS_PROJECT_DOMAIN_ID, s.OS_PROJECT_DOMAIN_NAME);
    if (!domain) {
      throw new OpenStackConfigError(
        'OS_PROJECT_DOMAIN_NAME',
        `OS_PROJECT_DOMAIN_NAME: not set; a project name is unique only within a domain, so set OS_PROJECT_DOMAIN_NAME (e.g. Default) or OS_PROJECT_DOMAIN_ID, or use OS_PROJECT_ID`,
      );
    }
    project = { name: s.OS_PROJECT_NAME, domain };
  }
  if (!project && !s.OS_SYSTEM_SCOPE) {
    throw new OpenStackConfigError(
      'OS_PROJECT_NAME',
      'OS_PROJECT_NAME: no scope set; set OS_PROJECT_NAME (a project where the user has admin, for Glance) and OS_SYSTEM_SCOPE=all (system reader, for unified limits)',
    );
  }
  return {
    authUrl,
    identity: { method, user, password: s.OS_PASSWORD },
    ...(project ? { project } : {}),
    ...(s.OS_SYSTEM_SCOPE ? { systemScope: s.OS_SYSTEM_SCOPE } : {}),
    ...regionAndTransport,
  };
}

/** Keystone accepts `/v3` only; the unversioned root (as in glance-api.conf) gets `/v3` added. */
function keystoneV3Url(url: string, where: string): string {
  const u = new URL(url);
  const trimmed = u.pathname.replace(/\/+$/, '');
  if (/\/v2\.0$/.test(trimmed)) {
    throw new OpenStackConfigError(
      'OS_AUTH_URL',
      `${where}: Keystone v2.0 is gone since Queens; use the v3 URL, e.g. ${u.origin}${trimmed.replace(/\/v2\.0$/, '/v3')}`,
    );
  }
  u.pathname = /\/v3$/.test(trimmed) ? trimmed : `${trimmed}/v3`;
  u.search = '';
  u.hash = '';
  return u.toString();
}

function domainRef(id: string | undefined, name: string | undefined): DomainRef | undefined {
  // keystoneauth prefers the id when both are given.
  if (id) return { id };
  if (name) return { name };
  return undefined;
}

function readCa(file: string | undefined, where: string): { caFile?: string; ca?: string } {
  if (!file) return {};
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new OpenStackConfigError(
      'OS_CACERT',
      `${where}: cannot read '${file}' (${code}); set it to a readable PEM file holding the CA of the Keystone and Glance certificates`,
      { cause: error },
    );
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new OpenStackConfigError(
      'OS_CACERT',
      `${where}: '${file}' holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line); point it at the CA bundle in PEM form`,
    );
  }
  return { caFile: file, ca: pem };
}

/**
 * A rejected value, fit for a message: a password pasted into the wrong variable, or user info in
 * a URL (`https://user:pass@host`), must not reach the log through the error.
 */
function shownValue(raw: string, sourced: Sourced): string {
  const secrets = [...SECRET_VARS].map((name) => sourced.values[name]);
  return scrub(raw, secrets);
}

function label(name: OpenStackEnvVar, sourced: Sourced): string {
  const origin = sourced.origin[name];
  return origin ? `${name} (from ${origin})` : name;
}

function nonBlank(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value;
}
