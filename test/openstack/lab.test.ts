import { randomUUID } from 'node:crypto';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createLogger } from '../../src/log.js';
import { loadCredentials } from '../../src/openstack/credentials.js';
import { KeystoneAuthError, ScopeUnavailableError } from '../../src/openstack/errors.js';
import { GlanceClient } from '../../src/openstack/glance.js';
import { KeystoneClient } from '../../src/openstack/keystone.js';
import { keystoneLimitsReader } from '../../src/openstack/keystone-limits.js';
import { UnifiedLimits } from '../../src/openstack/limits.js';
import { USAGE_RESOURCES } from '../../src/quota/resources.js';

/*
 * Against the real Keystone 22 / Glance 25 lab (/work/shared/lab/NOTES.md). Endpoints and
 * identities come from the environment the lab prints:
 *
 *   npm run lab:up && npm run test:e2e
 *   npx vitest run test/openstack
 *
 * Without the lab every test fails with the missing variable or the unreachable URL: never a skip.
 * Everything created here (images, a project, its limits, an application credential) is deleted
 * in afterAll, even when a test fails.
 */

const quiet = createLogger(process.env.LOG_LEVEL ?? 'silent');
const tag = `gqe-os-test-${process.pid}-${randomUUID().slice(0, 8)}`;

function labEnv(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: these tests need the OpenStack lab's environment. Run: npm run lab:up && npm run test:e2e`);
  }
  return value;
}

async function mustAnswer(what: string, url: string): Promise<void> {
  try {
    await fetch(url, { signal: AbortSignal.timeout(5_000) });
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).message;
    throw new Error(`${what} at ${url} is unreachable (${cause}): start the lab with npm run lab:up`);
  }
}

interface Lab {
  authUrl: string;
  glanceUrl: string;
  region: string;
  demoProjectId: string;
  enforcer: NodeJS.ProcessEnv;
  admin: NodeJS.ProcessEnv;
  demo: NodeJS.ProcessEnv;
}
let lab: Lab;
let enforcer: KeystoneClient;
let glance: GlanceClient;
let demo: KeystoneClient;
let admin: KeystoneClient;

const created = { images: [] as string[], projects: [] as string[], limits: [] as string[], appCreds: [] as { userId: string; id: string }[] };

// Memoised and awaited before each test rather than in beforeAll: without the lab every test then
// FAILS with the reason, where a failing beforeAll would report them as skipped.
let ready: Promise<void> | undefined;
beforeEach(() => (ready ??= setUp()));

async function setUp(): Promise<void> {
  const authUrl = labEnv('OS_AUTH_URL');
  const common = { OS_AUTH_URL: authUrl, OS_REGION_NAME: labEnv('OS_REGION_NAME'), OS_INTERFACE: process.env.OS_INTERFACE ?? 'public' };
  const domains = { OS_USER_DOMAIN_NAME: labEnv('LAB_USER_DOMAIN_NAME'), OS_PROJECT_DOMAIN_NAME: labEnv('LAB_PROJECT_DOMAIN_NAME') };
  lab = {
    authUrl,
    glanceUrl: labEnv('LAB_GLANCE_URL'),
    region: labEnv('OS_REGION_NAME'),
    demoProjectId: labEnv('LAB_DEMO_PROJECT_ID'),
    enforcer: {
      ...common,
      ...domains,
      OS_USERNAME: labEnv('LAB_ENFORCER_USERNAME'),
      OS_PASSWORD: labEnv('LAB_ENFORCER_PASSWORD'),
      OS_PROJECT_NAME: labEnv('LAB_ENFORCER_PROJECT_NAME'),
      OS_SYSTEM_SCOPE: labEnv('LAB_ENFORCER_SYSTEM_SCOPE'),
    },
    // The bootstrap admin holds admin on system scope: what POST /v3/limits and /v3/projects need.
    admin: { ...common, ...domains, OS_USERNAME: labEnv('LAB_ADMIN_USERNAME'), OS_PASSWORD: labEnv('LAB_ADMIN_PASSWORD'), OS_SYSTEM_SCOPE: 'all' },
    demo: {
      ...common,
      ...domains,
      OS_USERNAME: labEnv('LAB_DEMO_USERNAME'),
      OS_PASSWORD: labEnv('LAB_DEMO_PASSWORD'),
      OS_PROJECT_NAME: labEnv('LAB_DEMO_PROJECT_NAME'),
    },
  };
  await mustAnswer('Keystone (OS_AUTH_URL)', authUrl);
  await mustAnswer('Glance (LAB_GLANCE_URL)', lab.glanceUrl);
  enforcer = new KeystoneClient(loadCredentials(lab.enforcer, { searchDirs: [] }), { log: quiet });
  glance = new GlanceClient(enforcer, { log: quiet });
  demo = new KeystoneClient(loadCredentials(lab.demo, { searchDirs: [] }), { log: quiet });
  admin = new KeystoneClient(loadCredentials(lab.admin, { searchDirs: [] }), { log: quiet });
}

afterAll(async () => {
  if (!lab || !enforcer || !admin) return;
  const failures: string[] = [];
  const note = (what: string, status: number, ok: number[]) => {
    if (!ok.includes(status)) failures.push(`${what}: ${status}`);
  };
  if (created.images.length) {
    const token = (await enforcer.token('project')).value;
    for (const id of created.images) {
      await call(
        'PATCH',
        `${lab.glanceUrl}/v2/images/${id}`,
        token,
        [{ op: 'replace', path: '/protected', value: false }],
        'application/openstack-images-v2.1-json-patch',
      );
      note(`delete image ${id}`, (await call('DELETE', `${lab.glanceUrl}/v2/images/${id}`, token)).status, [204, 404]);
    }
  }
  if (created.limits.length || created.projects.length) {
    const token = (await admin.token('system')).value;
    for (const id of created.limits) note(`delete limit ${id}`, (await call('DELETE', `${lab.authUrl}/limits/${id}`, token)).status, [204, 404]);
    for (const id of created.projects) {
      await call('PATCH', `${lab.authUrl}/projects/${id}`, token, { project: { enabled: false } });
      note(`delete project ${id}`, (await call('DELETE', `${lab.authUrl}/projects/${id}`, token)).status, [204, 404]);
    }
  }
  if (created.appCreds.length) {
    const token = (await enforcer.token('project')).value;
    for (const { userId, id } of created.appCreds)
      note(
        `delete application credential ${id}`,
        (await call('DELETE', `${lab.authUrl}/users/${userId}/application_credentials/${id}`, token)).status,
        [204, 404],
      );
  }
  if (failures.length) throw new Error(`cleanup left things behind on the lab: ${failures.join('; ')}`);
});

/** A raw call for setting the scene (as a user would with curl), not through the code under test. */
async function call(method: string, url: string, token: string, body?: unknown, contentType = 'application/json'): Promise<{ status: number; json: any }> {
  const res = await fetch(url, {
    method,
    headers: { 'x-auth-token': token, accept: 'application/json', ...(body === undefined ? {} : { 'content-type': contentType }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  let json: any;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

/** demo creates an image, the way a tenant would; it is deleted in afterAll whatever happens. */
async function demoCreatesImage(extra: Record<string, unknown> = {}): Promise<string> {
  const token = (await demo.token('project')).value;
  const res = await call('POST', `${lab.glanceUrl}/v2/images`, token, {
    name: `${tag}-${created.images.length}`,
    disk_format: 'raw',
    container_format: 'bare',
    ...extra,
  });
  expect(res.status, JSON.stringify(res.json)).toBe(201);
  created.images.push(res.json.id);
  return res.json.id as string;
}

describe('Keystone, as the enforcer', () => {
  it('gets a system-scoped and a project-scoped token from one password identity', async () => {
    const system = await enforcer.token('system');
    const project = await enforcer.token('project');
    expect(system).toMatchObject({ scope: 'system', roles: ['reader'] });
    expect(system.projectId).toBeUndefined();
    expect(project.roles).toContain('admin');
    expect(project.projectId).toBe(labEnv('LAB_SERVICE_PROJECT_ID'));
    expect(project.userId).toBe(system.userId);
    expect(project.expiresAt).toBeGreaterThan(Date.now() + 10 * 60_000);
    // Reused, not reissued.
    expect((await enforcer.token('system')).value).toBe(system.value);
  });

  it('finds Glance in the catalog for the public interface of the region', async () => {
    const endpoint = await enforcer.endpoint('image');
    expect(endpoint).toEqual({ url: lab.glanceUrl, serviceId: expect.any(String), regionId: lab.region });
    expect((await enforcer.endpoint('image', 'system')).serviceId).toBe(endpoint.serviceId);
  });

  it('fails fast on a wrong password, naming the user and the fix, never the password', async () => {
    const wrong = `wrong-${randomUUID()}`;
    const client = new KeystoneClient(loadCredentials({ ...lab.enforcer, OS_PASSWORD: wrong }, { searchDirs: [] }), { log: quiet });
    const started = Date.now();
    const error = await client.token('project').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeystoneAuthError);
    expect((error as KeystoneAuthError).status).toBe(401);
    const message = (error as Error).message;
    expect(message).toContain(
      `refused the password of user '${lab.enforcer.OS_USERNAME}' (domain ${lab.enforcer.OS_USER_DOMAIN_NAME}) for a token on project '${lab.enforcer.OS_PROJECT_NAME}'`,
    );
    expect(message).toContain('The request you have made requires authentication.');
    expect(message).not.toContain(wrong);
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('renews a token Keystone no longer accepts, once, and goes on', async () => {
    const client = new KeystoneClient(loadCredentials(lab.enforcer, { searchDirs: [] }), { log: quiet });
    const old = await client.token('system');
    const revoke = await fetch(`${lab.authUrl}/auth/tokens`, { method: 'DELETE', headers: { 'x-auth-token': old.value, 'x-subject-token': old.value } });
    expect(revoke.status).toBe(204);
    const { serviceId } = await client.endpoint('image', 'system');
    const body = await client.getJson('system', `/registered_limits?service_id=${serviceId}`, z.object({ registered_limits: z.array(z.unknown()) }));
    expect(body.registered_limits.length).toBeGreaterThan(0);
    expect((await client.token('system')).value).not.toBe(old.value);
  });
});

describe('unified limits, read with the system-scoped token', () => {
  it('reads the four registered limits of the image service', async () => {
    const registered = await keystoneLimitsReader(enforcer, { log: quiet }).registeredLimits();
    const names = registered.map((l) => l.resource_name);
    for (const resource of USAGE_RESOURCES) expect(names).toContain(resource);
    expect(registered.every((l) => l.region_id === lab.region && Number.isInteger(l.default_limit))).toBe(true);
    const limits = await new UnifiedLimits(keystoneLimitsReader(enforcer, { log: quiet }), { log: quiet }).limitsFor(lab.demoProjectId);
    expect(limits).toEqual(
      Object.fromEntries(
        registered.filter((l) => (USAGE_RESOURCES as readonly string[]).includes(l.resource_name)).map((l) => [l.resource_name, l.default_limit]),
      ),
    );
  });

  it('lets a project limit created by an admin win over the registered one, and -1 mean unlimited', async () => {
    const adminToken = (await admin.token('system')).value;
    // A throwaway project, so that nobody else using the lab sees a limit change under them.
    const project = await call('POST', `${lab.authUrl}/projects`, adminToken, {
      project: { name: tag, domain_id: 'default', description: 'glance-quota-enforcer lab test; safe to delete' },
    });
    expect(project.status, JSON.stringify(project.json)).toBe(201);
    const projectId = project.json.project.id as string;
    created.projects.push(projectId);

    const limits = new UnifiedLimits(keystoneLimitsReader(enforcer, { log: quiet }), { cacheSeconds: 0, log: quiet });
    const before = await limits.limitsFor(projectId);
    expect(before.image_count_total).toBeGreaterThan(2);

    const { serviceId } = await enforcer.endpoint('image', 'system');
    const res = await call('POST', `${lab.authUrl}/limits`, adminToken, {
      limits: [
        { service_id: serviceId, project_id: projectId, region_id: lab.region, resource_name: 'image_count_total', resource_limit: 2 },
        { service_id: serviceId, project_id: projectId, region_id: lab.region, resource_name: 'image_size_total', resource_limit: -1 },
      ],
    });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
    created.limits.push(...(res.json.limits as { id: string }[]).map((l) => l.id));

    const after = await limits.limitsFor(projectId);
    expect(after).toEqual({ ...before, image_count_total: 2, image_size_total: undefined });
    expect('image_size_total' in after).toBe(false);

    for (const id of created.limits.splice(0)) expect((await call('DELETE', `${lab.authUrl}/limits/${id}`, adminToken)).status).toBe(204);
    expect(await limits.limitsFor(projectId)).toEqual(before);
  });

  it("lists every project's limits in one call, and a lowered limit acts at once on refresh", async () => {
    const adminToken = (await admin.token('system')).value;
    const projectIds: string[] = [];
    for (const n of [1, 2]) {
      const project = await call('POST', `${lab.authUrl}/projects`, adminToken, {
        project: { name: `${tag}-all-${n}`, domain_id: 'default', description: 'glance-quota-enforcer lab test; safe to delete' },
      });
      expect(project.status, JSON.stringify(project.json)).toBe(201);
      projectIds.push(project.json.project.id as string);
      created.projects.push(project.json.project.id as string);
    }
    const { serviceId } = await enforcer.endpoint('image', 'system');
    const res = await call('POST', `${lab.authUrl}/limits`, adminToken, {
      limits: projectIds.map((projectId, i) => ({
        service_id: serviceId,
        project_id: projectId,
        region_id: lab.region,
        resource_name: 'image_count_total',
        resource_limit: 10 + i,
      })),
    });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
    const limitIds = (res.json.limits as { id: string }[]).map((l) => l.id);
    created.limits.push(...limitIds);

    const listing = await keystoneLimitsReader(enforcer, { log: quiet }).allProjectLimits();
    expect(listing.truncated).toBe(false);
    expect(listing.limits.filter((l) => projectIds.includes(l.project_id ?? '')).map((l) => [l.project_id, l.resource_limit])).toEqual(
      expect.arrayContaining([
        [projectIds[0], 10],
        [projectIds[1], 11],
      ]),
    );
    expect(listing.limits.every((l) => l.service_id === serviceId && l.region_id === lab.region && l.project_id)).toBe(true);

    const limits = new UnifiedLimits(keystoneLimitsReader(enforcer, { log: quiet }), { cacheSeconds: 600, refreshSeconds: 0, log: quiet });
    expect((await limits.limitsFor(projectIds[0]!)).image_count_total).toBe(10);
    expect((await limits.limitsFor(projectIds[1]!)).image_count_total).toBe(11);
    // The operator lowers the first project's limit: the table read a moment ago still has 10, a refresh has 3.
    expect((await call('PATCH', `${lab.authUrl}/limits/${limitIds[0]}`, adminToken, { limit: { resource_limit: 3 } })).status).toBe(200);
    expect((await limits.limitsFor(projectIds[0]!)).image_count_total).toBe(10);
    expect((await limits.refresh(projectIds[0]!)).image_count_total).toBe(3);
    expect(await limits.lookup(projectIds[1]!)).toMatchObject({ limits: { image_count_total: 11 }, origin: 'keystone' });
  });

  it('cannot be read with an application credential, and says why', async () => {
    const projectToken = await enforcer.token('project');
    const res = await call('POST', `${lab.authUrl}/users/${projectToken.userId}/application_credentials`, projectToken.value, {
      application_credential: { name: tag, description: 'glance-quota-enforcer lab test; safe to delete' },
    });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
    created.appCreds.push({ userId: projectToken.userId, id: res.json.application_credential.id });
    expect(res.json.application_credential.project_id).toBe(projectToken.projectId);

    const viaAppCred = new KeystoneClient(
      loadCredentials(
        {
          OS_AUTH_URL: lab.authUrl,
          OS_REGION_NAME: lab.region,
          OS_APPLICATION_CREDENTIAL_ID: res.json.application_credential.id,
          OS_APPLICATION_CREDENTIAL_SECRET: res.json.application_credential.secret,
        },
        { searchDirs: [] },
      ),
      { log: quiet },
    );
    const token = await viaAppCred.token('project');
    expect(token.projectId).toBe(projectToken.projectId);
    expect(token.roles).toContain('admin');
    expect(() => keystoneLimitsReader(viaAppCred)).toThrow(ScopeUnavailableError);
    expect(() => keystoneLimitsReader(viaAppCred)).toThrow(/unified limits: no system-scoped token: application credentials are bound to the project/);
    // Its project token is enough for Glance.
    const id = await demoCreatesImage();
    await expect(new GlanceClient(viaAppCred, { log: quiet }).getImage(id)).resolves.toMatchObject({ id, owner: lab.demoProjectId });
  });
});

describe("Glance, with the enforcer's project-scoped admin token", () => {
  it("sees another project's image, lists it, deletes it (204), then finds it gone", async () => {
    const id = await demoCreatesImage();
    const image = await glance.getImage(id);
    expect(image).toMatchObject({ id, owner: lab.demoProjectId, status: 'queued', size: null, protected: false, visibility: 'shared' });
    expect(image?.os_glance_importing_to_stores).toBeUndefined();

    const listed: string[] = [];
    for await (const i of glance.listImages({ owner: lab.demoProjectId })) listed.push(i.id);
    expect(listed).toContain(id);

    await expect(glance.deleteImage(id)).resolves.toEqual({ result: 'deleted' });
    await expect(glance.getImage(id)).resolves.toBeNull();
    await expect(glance.deleteImage(id)).resolves.toEqual({ result: 'gone' });
  });

  it('answers 204 to DELETE, which deleteImage reports as deleted', async () => {
    const id = await demoCreatesImage();
    const res = await call('DELETE', `${lab.glanceUrl}/v2/images/${id}`, (await enforcer.token('project')).value);
    expect(res.status).toBe(204);
  });

  it('refuses to delete a protected image with 403, until it is unprotected', async () => {
    const id = await demoCreatesImage({ protected: true });
    await expect(glance.deleteImage(id)).resolves.toEqual({ result: 'refused', status: 403, reason: `Image ${id} is protected and cannot be deleted.` });
    const unprotect = await call(
      'PATCH',
      `${lab.glanceUrl}/v2/images/${id}`,
      (await demo.token('project')).value,
      [{ op: 'replace', path: '/protected', value: false }],
      'application/openstack-images-v2.1-json-patch',
    );
    expect(unprotect.status).toBe(200);
    await expect(glance.deleteImage(id)).resolves.toEqual({ result: 'deleted' });
  });

  it('lists community and hidden images too, which a plain GET /v2/images leaves out, page by page', async () => {
    const shared = await demoCreatesImage();
    const community = await demoCreatesImage({ visibility: 'community' });
    const hidden = await demoCreatesImage({ os_hidden: true });
    const token = (await enforcer.token('project')).value;

    const plain = await call('GET', `${lab.glanceUrl}/v2/images?owner=${lab.demoProjectId}&limit=1000`, token);
    const plainIds = (plain.json.images as { id: string }[]).map((i) => i.id);
    expect(plainIds).toContain(shared);
    expect(plainIds).not.toContain(community);
    expect(plainIds).not.toContain(hidden);

    const pages = await call('GET', `${lab.glanceUrl}/v2/images?owner=${lab.demoProjectId}&visibility=all&limit=1`, token);
    expect(pages.json.next).toMatch(/^\/v2\/images\?.*marker=/);

    const listed: string[] = [];
    for await (const i of glance.listImages({ owner: lab.demoProjectId, limit: 1 })) listed.push(i.id);
    expect(listed).toEqual(expect.arrayContaining([shared, community, hidden]));
    expect(new Set(listed).size).toBe(listed.length);
  });

  it("lists no one's private or shared images to a system-scoped token", async () => {
    const id = await demoCreatesImage();
    const res = await call('GET', `${lab.glanceUrl}/v2/images?owner=${lab.demoProjectId}&visibility=all`, (await enforcer.token('system')).value);
    expect(res.status).toBe(200);
    expect((res.json.images as { id: string }[]).map((i) => i.id)).not.toContain(id);
  });
});
