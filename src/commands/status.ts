import { parseArgs } from 'node:util';
import { openRuntime } from '../composition-root.js';
import { UnifiedLimits } from '../openstack/limits.js';
import type { ProjectReport } from '../pipeline/index.js';
import { USAGE_RESOURCES } from '../quota/resources.js';
import { printable } from '../redact.js';
import { limitsJson, table, type Io } from './output.js';

function statusTable(projects: ProjectReport[]): string {
  const header = ['project', ...USAGE_RESOURCES.map((r) => `${r} (use/limit)`), 'over'];
  const rows = projects.map((p) => [
    printable(p.projectId),
    ...USAGE_RESOURCES.map((r) => `${p.usage[r]}/${p.limits[r] ?? '-'}`),
    p.over.join(',') || '-',
  ]);
  return table(header, rows);
}


/** `status`: usage from the ledger, limits, what is over (the estimate; no Glance call). */
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
    const failed = runtime.limits instanceof UnifiedLimits ? runtime.limits.failures : 0;
    if (failed > 0) io.stderr(`warning: Keystone's unified limits could not be read for ${failed} of ${ids.length} project(s) (see the log above); those show registered or QUOTA_LIMITS limits\n`);
    if (values.json) {
      io.stdout(JSON.stringify({ projects: projects.map((p) => ({ project_id: p.projectId, usage: p.usage, limits: limitsJson(p.limits), over: p.over })) }) + '\n');
    } else {
      io.stdout(statusTable(projects));
    }
    return 0;
  } finally {
    await runtime.close();
  }
}
