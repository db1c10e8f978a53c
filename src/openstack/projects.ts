import { z } from 'zod';
import { OpenStackHttpError } from './errors.js';
import type { KeystoneClient } from './keystone.js';
import { scopeUnavailableReason, type Scope } from './scopes.js';

/** What `status` needs of Keystone's projects: the names operators know them by. */
export interface ProjectNames {
  /** Names of the given project ids; an id Keystone does not know is left out. */
  namesOf(projectIds: readonly string[]): Promise<Map<string, string>>;
}

/** Up to this many ids are read one by one (`GET /v3/projects/{id}`); more take one listing. */
export const ONE_BY_ONE = 5;

/** Ids a truncated listing left out are read one by one, at most this many. */
export const MAX_SINGLE_READS = 200;

const Project = z.object({ id: z.string(), name: z.string() });
const ProjectList = z.object({ projects: z.array(Project), truncated: z.boolean().optional() });
const ProjectBody = z.object({ project: Project });

/**
 * Project names from Keystone (`GET /v3/projects`, one listing, with the system-scoped token when
 * the identity has one: reader on system may list every project; else its project-scoped admin
 * token). Keystone cuts a listing at `[DEFAULT] list_limit` and says so (`truncated`); the ids it
 * left out are then read one by one.
 *
 * @example
 *   const names = await keystoneProjectNames(keystone).namesOf(['0f3a...']); // Map { '0f3a...' => 'demo' }
 */
export function keystoneProjectNames(keystone: KeystoneClient): ProjectNames {
  const scope: Scope = scopeUnavailableReason(keystone.credentials, 'system') ? 'project' : 'system';
  const one = async (id: string): Promise<string | undefined> => {
    try {
      return (await keystone.getJson(scope, `/projects/${encodeURIComponent(id)}`, ProjectBody)).project.name;
    } catch (err) {
      // A project deleted from Keystone while its images remain in Glance: it has no name.
      if (err instanceof OpenStackHttpError && err.status === 404) return undefined;
      throw err;
    }
  };
  return {
    async namesOf(projectIds) {
      const names = new Map<string, string>();
      let missing = [...new Set(projectIds)];
      if (missing.length > ONE_BY_ONE) {
        const listing = await keystone.getJson(scope, '/projects', ProjectList);
        const wanted = new Set(missing);
        for (const p of listing.projects) if (wanted.has(p.id)) names.set(p.id, p.name);
        missing = listing.truncated ? missing.filter((id) => !names.has(id)).slice(0, MAX_SINGLE_READS) : [];
      }
      for (const id of missing) {
        const name = await one(id);
        if (name !== undefined) names.set(id, name);
      }
      return names;
    },
  };
}
