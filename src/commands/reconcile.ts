import { parseArgs } from 'node:util';
import { openRuntime } from '../composition-root.js';
import { reconcile, type ReconcileProgress } from '../doors/reconcile.js';
import type { EnforcementReport } from '../pipeline/index.js';
import { printable, scrub } from '../redact.js';
import { limitsJson, type Io } from './output.js';

function progressLine(io: Io, enabled: boolean) {
  let last = 0;
  return (p: ReconcileProgress) => {
    const now = Date.now();
    if (!enabled || now - last < 200) return;
    last = now;
    io.stderr(`\r${p.phase}: ${p.listed} images listed, ${p.decided} projects decided   `);
  };
}

/** `reconcile`: the reconcile door once, the whole pass or one project; exit 1 if anything failed. */
export async function reconcileCommand(args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({ args, options: { project: { type: 'string' }, json: { type: 'boolean' }, 'dry-run': { type: 'boolean' } } });
  const env = values['dry-run'] ? { ...process.env, ENFORCEMENT_MODE: 'dry-run' } : process.env;
  const runtime = await openRuntime(env, { needGlance: true });
  try {
    const summary = await reconcile(runtime.pipeline, {
      ...(values.project ? { projectId: values.project } : {}),
      onProgress: progressLine(io, !values.json && Boolean(process.stderr.isTTY)),
    });
    const count = (kind: string) => summary.projects.reduce((n, p) => n + p.actions.filter((a) => a.action === kind).length, 0);
    const totals = {
      deleted: count('deleted'),
      would_delete: count('would-delete'),
      skipped: count('skipped'),
      protected: count('protected'),
      not_deletable: count('not-deletable'),
      gone: count('gone'),
    };
    if (values.json) {
      io.stdout(
        JSON.stringify({
          mode: runtime.pipeline.mode,
          listed: summary.listed,
          corrected: summary.corrected,
          unreadable: summary.unreadable,
          failures: summary.failures.map((f) => ({ project_id: f.projectId, error: f.error.message })),
          complete: summary.complete,
          phase: summary.phase,
          decided: summary.decided,
          deferred: summary.deferred,
          busy: summary.busy ?? false,
          pruned: summary.pruned,
          duration_ms: summary.durationMs,
          actions: totals,
          projects: summary.projects.map((p: EnforcementReport) => ({
            project_id: p.projectId,
            usage: p.usage,
            limits: limitsJson(p.limits),
            over: p.over,
            actions: p.actions.map((a) => ({ image_id: a.imageId, action: a.action, reason: a.reason })),
          })),
        }) + '\n',
      );
    } else {
      const over = summary.projects.filter((p) => p.over.length > 0);
      io.stdout(
        `reconcile (${runtime.pipeline.mode}): ${summary.decided} projects decided, ${summary.listed} images listed, ` +
          `ledger corrected ${JSON.stringify(summary.corrected)}, ${summary.failures.length} failed, ` +
          `${over.length} over quota; ${totals.deleted} deleted, ${totals.would_delete} would-delete, ${totals.skipped} skipped, ` +
          `${totals.not_deletable} not deletable, ${totals.gone} gone, in ${(summary.durationMs / 1000).toFixed(1)} s\n`,
      );
      for (const p of summary.projects)
        for (const a of p.actions) io.stdout(`  ${printable(p.projectId)} ${printable(a.imageId)} ${a.action}: ${printable(scrub(a.reason))}\n`);
    }
    // The other projects were reconciled all the same; the exit code tells cron something failed.
    for (const f of summary.failures) io.stderr(`reconcile of project ${f.projectId} failed: ${f.error.message}\n`);
    if (summary.busy) io.stderr('reconcile: another run holds the pass (a replica on the same ledger); it goes on there\n');
    else if (!summary.complete) io.stderr(`reconcile stopped in its ${summary.phase} phase: its first projects all failed; the next run goes on from there\n`);
    return summary.failures.length > 0 || (!summary.complete && !summary.busy) ? 1 : 0;
  } finally {
    await runtime.close();
  }
}
