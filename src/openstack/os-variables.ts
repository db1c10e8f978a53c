import { z } from 'zod';
import { EndpointInterface } from './identity.js';

/**
 * The OS_* variables the enforcer reads, as the `openstack` CLI names them: which clouds.yaml key
 * stands for each, which ones replace which when the environment sets them, and one schema over
 * them all. credentials.ts lays them over clouds.yaml and builds the identity from them.
 */

/** Every environment variable credentials.ts reads. */
export const OPENSTACK_ENV_VARS = [
  'OS_CLOUD',
  'OS_AUTH_URL',
  'OS_AUTH_TYPE',
  'OS_USERNAME',
  'OS_USER_ID',
  'OS_PASSWORD',
  'OS_USER_DOMAIN_NAME',
  'OS_USER_DOMAIN_ID',
  'OS_PROJECT_NAME',
  'OS_PROJECT_ID',
  'OS_PROJECT_DOMAIN_NAME',
  'OS_PROJECT_DOMAIN_ID',
  'OS_SYSTEM_SCOPE',
  'OS_APPLICATION_CREDENTIAL_ID',
  'OS_APPLICATION_CREDENTIAL_SECRET',
  'OS_REGION_NAME',
  'OS_INTERFACE',
  'OS_CACERT',
  'GLANCE_URL',
] as const;
export type OpenStackEnvVar = (typeof OPENSTACK_ENV_VARS)[number];

/** Variables whose value must never appear in a message or a log line. */
export const SECRET_VARS: ReadonlySet<OpenStackEnvVar> = new Set(['OS_PASSWORD', 'OS_APPLICATION_CREDENTIAL_SECRET']);

/** clouds.yaml key (dotted, after `-` -> `_` as openstacksdk normalises) -> the variable it stands for. */
export const CLOUD_KEYS: Readonly<Record<string, OpenStackEnvVar>> = {
  'auth.auth_url': 'OS_AUTH_URL',
  'auth.username': 'OS_USERNAME',
  'auth.user_id': 'OS_USER_ID',
  'auth.password': 'OS_PASSWORD',
  'auth.user_domain_name': 'OS_USER_DOMAIN_NAME',
  'auth.user_domain_id': 'OS_USER_DOMAIN_ID',
  'auth.project_name': 'OS_PROJECT_NAME',
  'auth.project_id': 'OS_PROJECT_ID',
  'auth.project_domain_name': 'OS_PROJECT_DOMAIN_NAME',
  'auth.project_domain_id': 'OS_PROJECT_DOMAIN_ID',
  'auth.system_scope': 'OS_SYSTEM_SCOPE',
  'auth.application_credential_id': 'OS_APPLICATION_CREDENTIAL_ID',
  'auth.application_credential_secret': 'OS_APPLICATION_CREDENTIAL_SECRET',
  auth_type: 'OS_AUTH_TYPE',
  region_name: 'OS_REGION_NAME',
  interface: 'OS_INTERFACE',
  // Kolla-Ansible writes the CA under auth:; the top-level key (openstacksdk's) wins when both are set.
  'auth.cacert': 'OS_CACERT',
  cacert: 'OS_CACERT',
  image_endpoint_override: 'GLANCE_URL',
};

/**
 * "Environment wins" applies to a choice, not only to a key: OS_PROJECT_NAME in the environment
 * must beat project_id in clouds.yaml (ids otherwise win over names), and an application
 * credential in the environment replaces a password identity from clouds.yaml. When the
 * environment sets any variable on the left, clouds.yaml values of those on the right are dropped.
 */
export const ALTERNATIVES: readonly (readonly [readonly OpenStackEnvVar[], readonly OpenStackEnvVar[]])[] = [
  [
    ['OS_PROJECT_NAME', 'OS_PROJECT_ID'],
    ['OS_PROJECT_NAME', 'OS_PROJECT_ID'],
  ],
  [
    ['OS_USERNAME', 'OS_USER_ID'],
    ['OS_USERNAME', 'OS_USER_ID'],
  ],
  [
    ['OS_USER_DOMAIN_NAME', 'OS_USER_DOMAIN_ID'],
    ['OS_USER_DOMAIN_NAME', 'OS_USER_DOMAIN_ID'],
  ],
  [
    ['OS_PROJECT_DOMAIN_NAME', 'OS_PROJECT_DOMAIN_ID'],
    ['OS_PROJECT_DOMAIN_NAME', 'OS_PROJECT_DOMAIN_ID'],
  ],
  [
    ['OS_APPLICATION_CREDENTIAL_ID', 'OS_APPLICATION_CREDENTIAL_SECRET'],
    ['OS_USERNAME', 'OS_USER_ID', 'OS_PASSWORD', 'OS_AUTH_TYPE'],
  ],
  [
    ['OS_USERNAME', 'OS_USER_ID', 'OS_PASSWORD'],
    ['OS_APPLICATION_CREDENTIAL_ID', 'OS_APPLICATION_CREDENTIAL_SECRET', 'OS_AUTH_TYPE'],
  ],
];

const nonEmpty = (fix: string) => z.string().min(1, { error: fix });
const httpUrl = (fix: string) =>
  z.string().refine(
    (v) => {
      try {
        return ['http:', 'https:'].includes(new URL(v).protocol);
      } catch {
        return false;
      }
    },
    { error: fix },
  );

/**
 * One schema over the variables (after clouds.yaml values are laid under the environment).
 * The `error` strings are the fix; `loadCredentials` prefixes the variable and where it came from.
 */
export const OpenStackSettings = z.object({
  OS_CLOUD: nonEmpty('the name of a cloud in clouds.yaml').optional(),
  OS_AUTH_URL: httpUrl('expected the Keystone URL, e.g. https://keystone.example.com:5000/v3').optional(),
  OS_AUTH_TYPE: z
    .enum(['password', 'v3password', 'v3applicationcredential'], {
      error: 'expected password, v3password or v3applicationcredential (the only methods the enforcer supports)',
    })
    .optional(),
  OS_USERNAME: nonEmpty('expected a user name').optional(),
  OS_USER_ID: nonEmpty('expected a user id').optional(),
  OS_PASSWORD: nonEmpty('expected the password of OS_USERNAME').optional(),
  OS_USER_DOMAIN_NAME: nonEmpty('expected a domain name, e.g. Default').optional(),
  OS_USER_DOMAIN_ID: nonEmpty('expected a domain id, e.g. default').optional(),
  OS_PROJECT_NAME: nonEmpty('expected a project name').optional(),
  OS_PROJECT_ID: nonEmpty('expected a project id').optional(),
  OS_PROJECT_DOMAIN_NAME: nonEmpty('expected a domain name, e.g. Default').optional(),
  OS_PROJECT_DOMAIN_ID: nonEmpty('expected a domain id, e.g. default').optional(),
  OS_SYSTEM_SCOPE: z.literal('all', { error: "expected 'all' (Keystone has no other system scope)" }).optional(),
  OS_APPLICATION_CREDENTIAL_ID: nonEmpty('expected an application credential id').optional(),
  OS_APPLICATION_CREDENTIAL_SECRET: nonEmpty('expected the secret of OS_APPLICATION_CREDENTIAL_ID').optional(),
  OS_REGION_NAME: nonEmpty('expected a region, e.g. RegionOne').optional(),
  OS_INTERFACE: z
    .string()
    // keystoneauth accepts the old catalog names too: publicURL, internalURL, adminURL.
    .transform((v) => v.replace(/URL$/, '').toLowerCase())
    .pipe(z.enum(EndpointInterface.options, { error: 'expected public, internal or admin (or publicURL, internalURL, adminURL)' }))
    .optional(),
  OS_CACERT: nonEmpty('expected the path of a PEM file').optional(),
  GLANCE_URL: httpUrl('expected the Glance URL, e.g. https://glance.example.com:9292').optional(),
});
export type OpenStackSettings = z.infer<typeof OpenStackSettings>;
