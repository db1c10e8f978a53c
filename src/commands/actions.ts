import { parseArgs } from 'node:util';
import { openRuntime } from '../composition-root.js';
import { ConfigError } from '../errors.js';
import { printable, scrub } from '../redact.js';
import { limitsJson, type Io } from './output.js';

/** `actions`: the audit trail from the ledger. */
export async function actionsCommand(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({ args, options: { project: { type: 'string' }, since: { type: 'string' }, json: { type: 'boolean' } } });
  const sinceMs = values.since === undefined ? undefined : Date.parse(values.since);
  if (sinceMs !== undefined && Number.isNaN(sinceMs))
    throw new ConfigError(`--since: expected an ISO time such as 2026-11-26T20:00:00Z, got '${values.since}'`);
  // The audit trail is in the ledger alone: no OpenStack identity is read, whatever OS_* says.
  const runtime = await openRuntime(process.env, { overrides: { glance: null } });
  try {
    const actions = await runtime.pipeline.ledger.actions({
      ...(values.project ? { projectId: values.project } : {}),
      ...(sinceMs !== undefined ? { sinceMs } : {}),
    });
    if (values.json) {
      io.stdout(
        JSON.stringify({
          actions: actions.map((a) => ({
            at: new Date(a.atMs).toISOString(),
            project_id: a.projectId,
            image_id: a.imageId,
            action: a.action,
            reason: a.reason,
            over: a.over,
            usage: a.usage,
            limits: limitsJson(a.limits),
          })),
        }) + '\n',
      );
    } else {
      for (const a of actions)
        io.stdout(`${new Date(a.atMs).toISOString()}  ${printable(a.projectId)}  ${printable(a.imageId)}  ${a.action}: ${printable(scrub(a.reason))}\n`);
    }
    return 0;
  } finally {
    await runtime.close();
  }
}
