import { parseArgs } from 'node:util';
import { openRuntime } from '../composition-root.js';
import { replayFile, replayJson } from '../doors/replay.js';
import { ConfigError } from '../errors.js';
import type { ProjectReport } from '../pipeline/index.js';
import { mergeLimits, parseLimits, type ProjectLimits } from '../quota/limits.js';
import { USAGE_RESOURCES } from '../quota/resources.js';
import { printable } from '../redact.js';
import { table, type Io } from './output.js';

function formatTable(projects: ProjectReport[]): string {
  const header = ['project', ...USAGE_RESOURCES, 'over', 'to_delete'];
  const rows = projects.map((p) => [
    printable(p.projectId),
    ...USAGE_RESOURCES.map((r) => String(p.usage[r])),
    p.over.join(',') || '-',
    String(p.toDelete.length),
  ]);
  return table(header, rows);
}

/** `replay FILE`: the replay door into its own ledger (memory unless --store), then the table or --json. */
export async function replay(args: string[], io: Io): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { limit: { type: 'string', multiple: true }, json: { type: 'boolean' }, store: { type: 'string' } },
  });
  const file = positionals[0];
  if (!file || positionals.length > 1) throw new ConfigError('replay: expected exactly one FILE, e.g. replay notifications.jsonl');
  let override: ProjectLimits = {};
  for (const l of values.limit ?? []) override = mergeLimits(override, parseLimits(l, '--limit'));
  const runtime = await openRuntime(process.env, {
    // replay reads a file into its own ledger: memory unless --store says otherwise, never STORE_URL.
    storeUrl: values.store ?? 'memory://',
    overrides: {
      limits: (configured) => ({ limitsFor: async (p) => mergeLimits(await configured.limitsFor(p), override) }),
      // Decides, never acts: no Glance, whatever OS_* says.
      glance: null,
      // Replay reports over-quota projects in its output; a log line per project would only repeat it.
      log: null,
    },
  });
  const { pipeline, log } = runtime;
  try {
    const summary = await replayFile(pipeline, file, {
      onInvalid: (line, reason) => io.stderr(`${printable(file)}:${line}: invalid: ${printable(reason)}\n`),
    });
    log.debug({ messages: summary.messages }, 'replay done');
    if (values.json) {
      io.stdout(JSON.stringify(replayJson(summary)) + '\n');
    } else {
      const m = summary.messages;
      io.stdout(`messages: ${m.total} total, ${m.applied} applied, ${m.duplicate} duplicate, ${m.ignored} ignored, ${m.invalid} invalid\n\n`);
      io.stdout(formatTable(summary.projects));
      for (const p of summary.projects.filter((p) => p.toDelete.length > 0)) {
        io.stdout(`\n${printable(p.projectId)} would delete (newest first): ${p.toDelete.map(printable).join(' ')}\n`);
      }
    }
    return 0;
  } finally {
    await runtime.close();
  }
}
