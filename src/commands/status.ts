import { parseArgs } from 'node:util';
import { openRuntime } from '../composition-root.js';
import { UnifiedLimits } from '../openstack/limits.js';
import type { ProjectReport } from '../pipeline/index.js';
import { fullness, nearestFirst } from '../quota/nearest.js';
import { USAGE_RESOURCES } from '../quota/resources.js';
import { printable } from '../redact.js';
import { limitsJson, table, type Io } from './output.js';

/** `2` -> `200%`; a limit of 0 already used is over by no finite share. */
function percent(f: number | undefined): string {
  if (f === undefined) return '-';
  return Number.isFinite(f) ? `${Math.round(f * 100)}%` : 'over 0';
}

function statusTable(projects: ProjectReport[], names: ReadonlyMap<string, string>): string {
  const header = ['project', 'name', 'fullest', ...USAGE_RESOURCES.map((r) => `${r} (use/limit)`), 'over'];
  const rows = projects.map((p) => [
    printable(p.projectId),
    printable(names.get(p.projectId) ?? '-'),
    percent(fullness(p.usage, p.limits)),
    ...USAGE_RESOURCES.map((r) => `${p.usage[r]}/${p.limits[r] ?? '-'}`),
    p.over.join(',') || '-',
  ]);
  return table(header, rows);
}

/**
 * `status`: every project of the ledger, nearest its limits first (over a limit, then the fullest:
 * src/quota/nearest.ts), with its Keystone name, usage against limits and what is over. The
 * ledger's estimate; no Glance call.
 */
export async function status(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({ args, options: { project: { type: 'string' }, json: { type: 'boolean' } } });
  // status only reads: usage comes from the ledger whatever Keystone says, so limits it cannot
  // read are a warning (the static QUOTA_LIMITS stand in), never a reason to print nothing.
  const runtime = await openRuntime(process.env, {
    onLimitsUnavailable: (reason) => io.stderr(`warning: ${reason}\nwarning: showing QUOTA_LIMITS / QUOTA_LIMITS_FILE limits only ('-' is unlimited)\n`),
  });
  try {
    const ids = values.project ? [values.project] : await runtime.pipeline.ledger.projects();
    const projects: ProjectReport[] = [];
    for (const id of ids) projects.push(await runtime.pipeline.evaluate(id));
    projects.sort(nearestFirst);
    const failed = runtime.limits instanceof UnifiedLimits ? runtime.limits.failures : 0;
    if (failed > 0)
      io.stderr(
        `warning: Keystone's unified limits could not be read for ${failed} of ${ids.length} project(s) (see the log above); those show registered or QUOTA_LIMITS limits\n`,
      );
    // Names only help the reader: a Keystone that cannot give them costs a warning, not the answer.
    const names = await (runtime.projectNames?.namesOf(ids) ?? Promise.resolve(new Map<string, string>())).catch((err: Error) => {
      io.stderr(`warning: project names unavailable from Keystone (${err.message}); showing ids only\n`);
      return new Map<string, string>();
    });
    if (values.json) {
      const json = projects.map((p) => {
        const f = fullness(p.usage, p.limits);
        return {
          project_id: p.projectId,
          project_name: names.get(p.projectId) ?? null,
          // usage / limit of the fullest resource; null with no limit (or a limit of 0 in use: see `over`).
          fullness: f === undefined || !Number.isFinite(f) ? null : Math.round(f * 1000) / 1000,
          usage: p.usage,
          limits: limitsJson(p.limits),
          over: p.over,
        };
      });
      io.stdout(JSON.stringify({ projects: json }) + '\n');
    } else {
      io.stdout(statusTable(projects, names));
    }
    return 0;
  } finally {
    await runtime.close();
  }
}
