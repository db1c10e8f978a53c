import { parseArgs } from 'node:util';
import { openRuntime } from '../composition-root.js';
import { reconcile } from '../doors/reconcile.js';
import type { EnforcementReport } from '../pipeline/index.js';
import { printable, scrub } from '../redact.js';
import { limitsJson, type Io } from './output.js';

function progressBar(io: Io, enabled: boolean) {
  return (done: number, total: number, projectId: string) => {
    if (!enabled || total < 2) return;
    const width = 30;
    const filled = Math.round((done / total) * width);
    io.stderr(
      `\r[${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${done}/${total} projects ${printable(projectId.slice(0, 12))}${done === total ? '\n' : ''}`,
    );
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
      onProgress: progressBar(io, !values.json && Boolean(process.stderr.isTTY)),
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
          remaining: summary.remaining,
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
        `reconcile (${runtime.pipeline.mode}): ${summary.projects.length} projects, ${summary.listed} images listed, ` +
          `ledger corrected ${JSON.stringify(summary.corrected)}, ${summary.failures.length} failed, ` +
          `${over.length} over quota; ${totals.deleted} deleted, ${totals.would_delete} would-delete, ${totals.skipped} skipped, ` +
          `${totals.not_deletable} not deletable, ${totals.gone} gone, in ${(summary.durationMs / 1000).toFixed(1)} s\n`,
      );
      for (const p of summary.projects)
        for (const a of p.actions) io.stdout(`  ${printable(p.projectId)} ${printable(a.imageId)} ${a.action}: ${printable(scrub(a.reason))}\n`);
    }
    // The other projects were reconciled all the same; the exit code tells cron something failed.
    for (const f of summary.failures) io.stderr(`reconcile of project ${f.projectId} failed: ${f.error.message}\n`);
    if (!summary.complete) io.stderr(`reconcile stopped with ${summary.remaining} project(s) not reached: its first projects all failed\n`);
    return summary.failures.length > 0 || !summary.complete ? 1 : 0;
  } finally {
    await runtime.close();
  }
}
