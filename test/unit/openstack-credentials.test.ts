import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cloudsFileCandidates, cloudsSearchDirs, mergeClouds } from '../../src/openstack/clouds-yaml.js';
import { loadCredentials } from '../../src/openstack/credentials.js';
import { OpenStackConfigError } from '../../src/openstack/errors.js';

// Distinctive values, so that a leak anywhere in a message is found by a plain substring search.
const PASSWORD = 'pw-Sup3r-S3cret-7f1c';
const APP_SECRET = 'appcred-S3cret-9b2e';

const enforcerEnv = {
  OS_AUTH_URL: 'https://keystone.example.com:5000/v3',
  OS_USERNAME: 'enforcer',
  OS_PASSWORD: PASSWORD,
  OS_USER_DOMAIN_NAME: 'Default',
  OS_PROJECT_NAME: 'service',
  OS_PROJECT_DOMAIN_NAME: 'Default',
  OS_SYSTEM_SCOPE: 'all',
  OS_REGION_NAME: 'RegionOne',
};

function configError(fn: () => unknown): OpenStackConfigError {
  try {
    fn();
  } catch (error) {
    if (error instanceof OpenStackConfigError) return error;
    throw error;
  }
  throw new Error('expected an OpenStackConfigError, got none');
}

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'gqe-openstack-creds-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('an openrc in the environment', () => {
  it('gives both scopes of one password identity', () => {
    const c = loadCredentials(enforcerEnv, { searchDirs: [] });
    expect(c).toEqual({
      authUrl: 'https://keystone.example.com:5000/v3',
      identity: { method: 'password', user: { name: 'enforcer', domain: { name: 'Default' } }, password: PASSWORD },
      project: { name: 'service', domain: { name: 'Default' } },
      systemScope: 'all',
      regionName: 'RegionOne',
      interface: 'public',
    });
  });

  it('accepts the unversioned Keystone root, as glance-api.conf writes it, and adds /v3', () => {
    expect(loadCredentials({ ...enforcerEnv, OS_AUTH_URL: 'http://127.0.0.1:5000/' }).authUrl).toBe('http://127.0.0.1:5000/v3');
    expect(loadCredentials({ ...enforcerEnv, OS_AUTH_URL: 'https://cloud.example.com/identity/v3/' }).authUrl).toBe('https://cloud.example.com/identity/v3');
  });

  it('refuses a v2.0 URL and says which v3 URL to use', () => {
    const e = configError(() => loadCredentials({ ...enforcerEnv, OS_AUTH_URL: 'http://keystone:5000/v2.0' }));
    expect(e.variable).toBe('OS_AUTH_URL');
    expect(e.message).toContain('http://keystone:5000/v3');
  });

  it('reads OS_INTERFACE in both the new and the old catalog spelling', () => {
    expect(loadCredentials({ ...enforcerEnv, OS_INTERFACE: 'internalURL' }).interface).toBe('internal');
    expect(loadCredentials({ ...enforcerEnv, OS_INTERFACE: 'admin' }).interface).toBe('admin');
    const e = configError(() => loadCredentials({ ...enforcerEnv, OS_INTERFACE: 'private' }));
    expect(e.message).toBe("OS_INTERFACE: expected public, internal or admin (or publicURL, internalURL, adminURL), got 'private'");
  });

  it('prefers ids over names, as keystoneauth does', () => {
    const c = loadCredentials({ ...enforcerEnv, OS_PROJECT_ID: 'p-1', OS_USER_DOMAIN_ID: 'default' });
    expect(c.project).toEqual({ id: 'p-1' });
    expect(c.identity).toMatchObject({ user: { name: 'enforcer', domain: { id: 'default' } } });
  });

  it('asks for the user domain when only a user name is given', () => {
    const e = configError(() => loadCredentials({ ...enforcerEnv, OS_USER_DOMAIN_NAME: undefined }));
    expect(e.variable).toBe('OS_USER_DOMAIN_NAME');
    expect(e.message).toMatch(/set OS_USER_DOMAIN_NAME \(e\.g\. Default\)/);
  });

  it('needs at least one scope', () => {
    const e = configError(() => loadCredentials({ ...enforcerEnv, OS_PROJECT_NAME: undefined, OS_SYSTEM_SCOPE: undefined }));
    expect(e.message).toContain('OS_SYSTEM_SCOPE=all');
  });

  it('takes GLANCE_URL as the image endpoint, without a trailing slash', () => {
    expect(loadCredentials({ ...enforcerEnv, GLANCE_URL: 'http://127.0.0.1:9292/' }).glanceUrl).toBe('http://127.0.0.1:9292');
    expect(configError(() => loadCredentials({ ...enforcerEnv, GLANCE_URL: 'glance:9292' })).message).toBe(
      "GLANCE_URL: expected the Glance URL, e.g. https://glance.example.com:9292, got 'glance:9292'",
    );
  });

  it('treats an empty variable as unset', () => {
    expect(loadCredentials({ ...enforcerEnv, OS_REGION_NAME: '' }).regionName).toBeUndefined();
  });
});

describe('application credentials', () => {
  const appEnv = {
    OS_AUTH_URL: 'http://127.0.0.1:5000/v3',
    OS_APPLICATION_CREDENTIAL_ID: 'ac-1',
    OS_APPLICATION_CREDENTIAL_SECRET: APP_SECRET,
  };

  it('carry their own project, so leftover OS_PROJECT_* are ignored', () => {
    const c = loadCredentials({ ...appEnv, OS_PROJECT_NAME: 'demo', OS_PROJECT_DOMAIN_NAME: 'Default' });
    expect(c.identity).toEqual({ method: 'application_credential', id: 'ac-1', secret: APP_SECRET });
    expect(c.project).toBeUndefined();
  });

  it('cannot be system-scoped, and the error says what to do instead', () => {
    const e = configError(() => loadCredentials({ ...appEnv, OS_SYSTEM_SCOPE: 'all' }));
    expect(e.variable).toBe('OS_SYSTEM_SCOPE');
    expect(e.message).toContain('bound to the project');
  });

  it('conflict with a password unless OS_AUTH_TYPE says which one', () => {
    const both = { ...enforcerEnv, ...appEnv };
    expect(configError(() => loadCredentials(both)).variable).toBe('OS_AUTH_TYPE');
    expect(loadCredentials({ ...both, OS_AUTH_TYPE: 'v3applicationcredential', OS_SYSTEM_SCOPE: undefined }).identity.method).toBe('application_credential');
    expect(loadCredentials({ ...both, OS_AUTH_TYPE: 'password' }).identity.method).toBe('password');
  });
});

describe('OS_CACERT', () => {
  it('is read at load time, so a wrong path fails at startup', () => {
    const pem = path.join(dir, 'ca.pem');
    writeFileSync(pem, '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    expect(loadCredentials({ ...enforcerEnv, OS_CACERT: pem })).toMatchObject({ caFile: pem, ca: expect.stringContaining('BEGIN CERTIFICATE') });
    const e = configError(() => loadCredentials({ ...enforcerEnv, OS_CACERT: path.join(dir, 'missing.pem') }));
    expect(e.message).toMatch(/^OS_CACERT: cannot read '.*missing\.pem' \(ENOENT\); set it to a readable PEM file/);
  });

  it('must hold a PEM certificate', () => {
    const der = path.join(dir, 'ca.der');
    writeFileSync(der, Buffer.from([0x30, 0x82, 0x01]));
    expect(configError(() => loadCredentials({ ...enforcerEnv, OS_CACERT: der })).message).toContain("no '-----BEGIN CERTIFICATE-----' line");
  });
});

describe('OS_CLOUD and clouds.yaml', () => {
  const cloudsYaml = `
clouds:
  lab:
    auth:
      auth_url: http://127.0.0.1:5000
      username: enforcer
      user_domain_name: Default
      project_name: service
      project-domain-name: Default   # openstacksdk accepts dashes too
      system_scope: all
    region_name: RegionOne
    interface: internal
  other:
    auth: { auth_url: http://other:5000/v3 }
`;
  const secureYaml = `
clouds:
  lab:
    auth:
      password: ${PASSWORD}
`;

  function write(file: string, text: string): string {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, text);
    return file;
  }

  it('merges secure.yaml into clouds.yaml, each found on its own along the search path', () => {
    const cwd = path.join(dir, 'cwd');
    const home = path.join(dir, 'home');
    write(path.join(cwd, 'clouds.yaml'), cloudsYaml);
    write(path.join(home, '.config', 'openstack', 'secure.yaml'), secureYaml);
    const env = { OS_CLOUD: 'lab' };
    const c = loadCredentials(env, { searchDirs: cloudsSearchDirs(env, { cwd, home }) });
    expect(c).toEqual({
      authUrl: 'http://127.0.0.1:5000/v3',
      identity: { method: 'password', user: { name: 'enforcer', domain: { name: 'Default' } }, password: PASSWORD },
      project: { name: 'service', domain: { name: 'Default' } },
      systemScope: 'all',
      regionName: 'RegionOne',
      interface: 'internal',
    });
  });

  it('lets every environment variable win over its clouds.yaml key', () => {
    const file = write(path.join(dir, 'clouds.yaml'), cloudsYaml + `    # \n`);
    const c = loadCredentials(
      { OS_CLOUD: 'lab', OS_CLIENT_CONFIG_FILE: file, OS_PASSWORD: 'from-env', OS_REGION_NAME: 'RegionTwo', OS_INTERFACE: 'public', OS_PROJECT_ID: 'p-42' },
      { searchDirs: [] },
    );
    expect(c.identity).toMatchObject({ password: 'from-env' });
    expect(c.regionName).toBe('RegionTwo');
    expect(c.interface).toBe('public');
    expect(c.project).toEqual({ id: 'p-42' });
  });

  it('lets the environment win a choice too: a project name over a clouds.yaml project id, an application credential over a password', () => {
    const file = write(
      path.join(dir, 'clouds.yaml'),
      `
clouds:
  lab:
    auth: { auth_url: "http://k:5000/v3", username: enforcer, password: ${PASSWORD}, user_domain_id: default, project_id: p-from-yaml }
`,
    );
    const byName = loadCredentials(
      { OS_CLOUD: 'lab', OS_CLIENT_CONFIG_FILE: file, OS_PROJECT_NAME: 'demo', OS_PROJECT_DOMAIN_NAME: 'Default' },
      { searchDirs: [] },
    );
    expect(byName.project).toEqual({ name: 'demo', domain: { name: 'Default' } });
    const viaAppCred = loadCredentials(
      { OS_CLOUD: 'lab', OS_CLIENT_CONFIG_FILE: file, OS_APPLICATION_CREDENTIAL_ID: 'ac-1', OS_APPLICATION_CREDENTIAL_SECRET: APP_SECRET },
      { searchDirs: [] },
    );
    expect(viaAppCred.identity).toEqual({ method: 'application_credential', id: 'ac-1', secret: APP_SECRET });
  });

  it('searches OS_CLIENT_CONFIG_FILE first, then the working directory before the home directory', () => {
    const env = { OS_CLIENT_CONFIG_FILE: '/x/my.yaml', XDG_CONFIG_DIRS: '' };
    const dirs = cloudsSearchDirs(env, { cwd: '/w', home: '/h' });
    expect(dirs).toEqual(['/w', '/h/.config/openstack', '/etc/xdg/openstack', '/etc/openstack']);
    expect(cloudsFileCandidates(env, dirs, 'clouds').slice(0, 4)).toEqual(['/x/my.yaml', '/w/clouds.yaml', '/w/clouds.yml', '/w/clouds.json']);
    const cwd = path.join(dir, 'cwd');
    const home = path.join(dir, 'home');
    write(
      path.join(cwd, 'clouds.yaml'),
      'clouds: { lab: { auth: { auth_url: "http://from-cwd:5000/v3", username: u, user_domain_id: default, password: p, project_id: x } } }',
    );
    write(path.join(home, '.config', 'openstack', 'clouds.yaml'), 'clouds: { lab: { auth: { auth_url: "http://from-home:5000/v3" } } }');
    expect(loadCredentials({ OS_CLOUD: 'lab' }, { searchDirs: cloudsSearchDirs({}, { cwd, home }) }).authUrl).toBe('http://from-cwd:5000/v3');
  });

  it('reads the clouds.yaml Kolla-Ansible writes, and says which of its keys it does not use', () => {
    const pem = write(path.join(dir, 'kolla', 'root.crt'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    const file = write(
      path.join(dir, 'kolla', 'clouds.yaml'),
      `
clouds:
  kolla-admin:
    auth:
      auth_url: https://keystone.internal:5000
      username: enforcer
      password: ${PASSWORD}
      user_domain_name: Default
      project_name: service
      project_domain_name: Default
      domain_name: Default
      cacert: ${pem}
      system_scope: all
    identity_interface: internal
    identity_api_version: 3
    region_name: RegionOne
    interface: internal
    frobnicate: ${PASSWORD}
`,
    );
    const warnings: string[] = [];
    const c = loadCredentials({ OS_CLOUD: 'kolla-admin', OS_CLIENT_CONFIG_FILE: file }, { searchDirs: [], onWarning: (m) => warnings.push(m) });
    expect(c).toMatchObject({ caFile: pem, ca: expect.stringContaining('BEGIN CERTIFICATE'), interface: 'internal', systemScope: 'all' });
    expect(warnings).toEqual([
      `${file}, cloud 'kolla-admin': key auth.domain_name is not used: set auth.user_domain_name and auth.project_domain_name (or OS_USER_DOMAIN_NAME and OS_PROJECT_DOMAIN_NAME) instead`,
      `${file}, cloud 'kolla-admin': key identity_interface is not used: the enforcer reaches Keystone only at auth.auth_url (set auth_url to the endpoint of that interface)`,
      `${file}, cloud 'kolla-admin': key frobnicate is not used: the enforcer does not read it (README lists the keys it reads)`,
    ]);
    expect(warnings.join('\n')).not.toContain(PASSWORD);
  });

  it("prefers the top-level cacert, openstacksdk's own, over Kolla's auth.cacert", () => {
    const a = write(path.join(dir, 'ca-a.pem'), '-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n');
    const b = write(path.join(dir, 'ca-b.pem'), '-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n');
    const file = write(
      path.join(dir, 'both-ca.yaml'),
      `clouds: { c: { cacert: ${a}, auth: { cacert: ${b}, auth_url: "http://k:5000/v3", username: u, password: p, user_domain_name: D, project_name: s, project_domain_name: D } } }`,
    );
    expect(loadCredentials({ OS_CLOUD: 'c', OS_CLIENT_CONFIG_FILE: file }, { searchDirs: [], onWarning: () => {} }).caFile).toBe(a);
  });

  it('names the clouds it has when OS_CLOUD is not among them', () => {
    const file = write(path.join(dir, 'clouds.yaml'), cloudsYaml);
    const e = configError(() => loadCredentials({ OS_CLOUD: 'prod', OS_CLIENT_CONFIG_FILE: file }, { searchDirs: [] }));
    expect(e.message).toBe(`OS_CLOUD: no cloud 'prod' in ${file}; it has: lab, other`);
  });

  it('says where it looked when there is no clouds.yaml', () => {
    const e = configError(() => loadCredentials({ OS_CLOUD: 'lab' }, { searchDirs: [dir] }));
    expect(e.message).toBe(`OS_CLOUD: cloud 'lab' asked for, but no clouds.yaml found in ${dir}; create one there or set OS_CLIENT_CONFIG_FILE`);
  });

  it('says which clouds.yaml key a bad value came from', () => {
    const file = write(path.join(dir, 'clouds.yaml'), 'clouds: { lab: { interface: private, auth: { auth_url: "http://k:5000/v3" } } }');
    const e = configError(() => loadCredentials({ OS_CLOUD: 'lab', OS_CLIENT_CONFIG_FILE: file }, { searchDirs: [] }));
    expect(e.message).toBe(
      `OS_INTERFACE (from ${file}, cloud 'lab', key interface): expected public, internal or admin (or publicURL, internalURL, adminURL), got 'private'`,
    );
  });

  it("merges like openstacksdk's merge_clouds: nested maps merge, scalars and lists replace", () => {
    expect(mergeClouds({ clouds: { a: { auth: { x: 1, y: 2 }, r: [1] } } }, { clouds: { a: { auth: { y: 3 }, r: [2] }, b: {} } })).toEqual({
      clouds: { a: { auth: { x: 1, y: 3 }, r: [2] }, b: {} },
    });
  });
});

describe('no setting error ever shows a password or a secret', () => {
  const write = (name: string, text: string) => {
    const file = path.join(dir, name);
    writeFileSync(file, text);
    return file;
  };

  it.each([
    ['a bad OS_INTERFACE', () => ({ ...enforcerEnv, OS_INTERFACE: 'nope' })],
    ['a bad OS_AUTH_URL', () => ({ ...enforcerEnv, OS_AUTH_URL: `https://enforcer:${PASSWORD}@` })],
    ['a missing user domain', () => ({ ...enforcerEnv, OS_USER_DOMAIN_NAME: undefined })],
    [
      'a password next to an application credential',
      () => ({ ...enforcerEnv, OS_APPLICATION_CREDENTIAL_ID: 'x', OS_APPLICATION_CREDENTIAL_SECRET: APP_SECRET }),
    ],
    [
      'an application credential with system scope',
      () => ({ OS_AUTH_URL: 'http://k/v3', OS_APPLICATION_CREDENTIAL_ID: 'x', OS_APPLICATION_CREDENTIAL_SECRET: APP_SECRET, OS_SYSTEM_SCOPE: 'all' }),
    ],
    ['an application credential without its id', () => ({ OS_AUTH_URL: 'http://k/v3', OS_APPLICATION_CREDENTIAL_SECRET: APP_SECRET })],
    ['a bad OS_SYSTEM_SCOPE', () => ({ ...enforcerEnv, OS_SYSTEM_SCOPE: PASSWORD })],
    [
      'a broken clouds.yaml line holding the password',
      () => ({
        OS_CLOUD: 'lab',
        OS_CLIENT_CONFIG_FILE: write('broken.yaml', `clouds:\n  lab:\n    auth:\n      password: "${PASSWORD}\n   x: [${APP_SECRET}\n`),
      }),
    ],
    [
      'clouds.yaml with verify: false',
      () => ({ OS_CLOUD: 'lab', OS_CLIENT_CONFIG_FILE: write('v.yaml', `clouds: { lab: { verify: false, auth: { password: ${PASSWORD} } } }`) }),
    ],
    [
      'a bad value in clouds.yaml next to the secret',
      () => ({
        OS_CLOUD: 'lab',
        OS_CLIENT_CONFIG_FILE: write(
          'b.yaml',
          `clouds: { lab: { region_name: "", auth: { auth_url: "x${PASSWORD}", password: ${PASSWORD}, application_credential_secret: ${APP_SECRET} } } }`,
        ),
      }),
    ],
  ])('with %s', (_what, env) => {
    const e = configError(() => loadCredentials(env(), { searchDirs: [] }));
    expect(e.message).not.toContain(PASSWORD);
    expect(e.message).not.toContain(APP_SECRET);
    expect(JSON.stringify(e)).not.toContain(PASSWORD);
  });
});
