import { z } from 'zod';

/**
 * What the enforcer authenticates as, in the shape the Keystone client takes: an identity
 * (a password or an application credential), the scopes to ask for, and where to reach the
 * endpoints. credentials.ts reads it from the OS_* variables and clouds.yaml.
 */

export const EndpointInterface = z.enum(['public', 'internal', 'admin']);
export type EndpointInterface = z.infer<typeof EndpointInterface>;

const DomainRef = z.union([z.object({ id: z.string() }), z.object({ name: z.string() })]);
export type DomainRef = z.infer<typeof DomainRef>;

const ProjectRef = z.union([z.object({ id: z.string() }), z.object({ name: z.string(), domain: DomainRef })]);
export type ProjectRef = z.infer<typeof ProjectRef>;

const PasswordIdentity = z.object({
  method: z.literal('password'),
  user: z.union([z.object({ id: z.string() }), z.object({ name: z.string(), domain: DomainRef })]),
  password: z.string(),
});

const ApplicationCredentialIdentity = z.object({
  method: z.literal('application_credential'),
  id: z.string(),
  secret: z.string(),
});

export const Identity = z.discriminatedUnion('method', [PasswordIdentity, ApplicationCredentialIdentity]);
export type Identity = z.infer<typeof Identity>;

/** The resolved settings, ready for the Keystone client. */
export const Credentials = z.object({
  /** Always ends in `/v3`. */
  authUrl: z.string(),
  identity: Identity,
  /** Scope of the project token; absent with a password identity that only has system scope. */
  project: ProjectRef.optional(),
  systemScope: z.literal('all').optional(),
  regionName: z.string().optional(),
  interface: EndpointInterface,
  /** Path of OS_CACERT, for messages. */
  caFile: z.string().optional(),
  /** Its PEM text, read once at load time so a bad path fails at startup. */
  ca: z.string().optional(),
  /** GLANCE_URL: the image endpoint, bypassing the catalog. */
  glanceUrl: z.string().optional(),
});
export type Credentials = z.infer<typeof Credentials>;
