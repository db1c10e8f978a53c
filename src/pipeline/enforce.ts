import { ConfigError, errorCode } from '../errors.js';
import { tombstoneOf, type OwnedImage } from '../ledger/glance-image.js';
import { eventFromGlance } from '../ledger/glance-image.js';
import { recordFromEvent } from '../ledger/record.js';
import { decide, recordsNeeded } from '../quota/decide.js';
import { verifyCandidate } from '../quota/verify.js';
import type { ActionRecord } from '../store/port.js';
import type { PipelineContext } from './context.js';
import { judge, type Judgement } from './judge.js';
import { repair } from './listing.js';
import type { EnforcementReport, ImageService, ProjectFailure, ProjectReport } from './ports.js';

/**
 * Usage, limits and the decision for one project, from the ledger: the estimate. Usage is the
 * totals the last batch that changed the project committed, when the store returned them and
 * they are recent, or else read from the store; either way an act is decided on Glance's listing
 * only.
 */
export async function evaluate(ctx: PipelineContext, projectId: string): Promise<ProjectReport> {
  const [usage, limits] = await Promise.all([ctx.committed.take(projectId, ctx.clock()) ?? ctx.store.usage(projectId), ctx.limits.limitsFor(projectId)]);
  const exempt = ctx.exempt.has(projectId);
  // Most messages leave a project under its limits: then no image needs to be read at all.
  const needed = recordsNeeded(usage, limits);
  const records = !needed ? [] : 'all' in needed ? await ctx.store.images(projectId) : await ctx.store.removableImages(projectId, needed.removable);
  const { over, toDelete } = decide(records, usage, limits, exempt);
  return { projectId, usage, limits, over, toDelete, exempt, basis: 'ledger' };
}

/**
 * The bus's estimate first: when the ledger says the project has candidates for deletion, the
 * act is decided on Glance's own listing of the project (`enforceOnGlance`), never on the
 * ledger. Forged or lost notifications can make the ledger wrong; they cannot make it delete.
 */
export async function enforce(ctx: PipelineContext, projectId: string): Promise<EnforcementReport> {
  const estimate = await evaluate(ctx, projectId);
  if (estimate.toDelete.length === 0 || !ctx.images) return { ...estimate, actions: [] };
  // A dry run sees the same candidates on every message of a flood: Glance is asked once for them.
  if (ctx.mode === 'dry-run' && estimate.toDelete.every((id) => ctx.wouldDelete.has(id))) return { ...estimate, actions: [] };
  ctx.log?.info({ projectId, usage: estimate.usage, limits: estimate.limits, over: estimate.over, candidates: estimate.toDelete.length }, 'ledger says over quota; asking Glance');
  return enforceOnGlance(ctx, projectId);
}

/**
 * `enforce` for each project, one after the other. A failure (Keystone, Glance, the store) is
 * collected and logged, and the projects after it are still enforced: the door decides what a
 * failure means for its acknowledgement (a function fails its batch, the worker retries).
 */
export async function enforceAll(ctx: PipelineContext, projects: readonly string[]): Promise<{ reports: EnforcementReport[]; failures: ProjectFailure[] }> {
  const reports: EnforcementReport[] = [];
  const failures: ProjectFailure[] = [];
  for (const projectId of projects) {
    try {
      reports.push(await enforce(ctx, projectId));
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      ctx.log?.warn({ projectId, err: error.message, kind: error.name, code: errorCode(error) }, 'enforcement failed');
      failures.push({ projectId, error });
    }
  }
  return { reports, failures };
}

/**
 * The truth path: list the project in Glance (all pages), overwrite the ledger with what Glance
 * says, compute usage with Glance's definitions from the listing, and delete at most (Glance's
 * count - limit) images, the newest queued ones by Glance's `created_at`, then id.
 */
export function enforceOnGlance(ctx: PipelineContext, projectId: string): Promise<EnforcementReport> {
  const images = requireImages(ctx);
  return ctx.locks.run(projectId, async () => {
    const listedAtMs = ctx.clock();
    const listing: OwnedImage[] = [];
    for await (const image of images.listImages({ owner: projectId })) if (image.owner === projectId) listing.push(image as OwnedImage);
    const corrected = await repair(ctx, projectId, listing, listedAtMs);
    // About to delete: a limit raised a moment ago must count, so the limits are read afresh
    // (rate-limited by the source) rather than from the table's last refresh.
    const limits = ctx.limits.refresh ? await ctx.limits.refresh(projectId) : await ctx.limits.limitsFor(projectId);
    const judged = judge(ctx, projectId, listing, corrected, limits);
    return { ...judged.report, actions: await act(ctx, images, judged) };
  });
}

function requireImages(ctx: PipelineContext): ImageService {
  if (!ctx.images) throw new ConfigError('enforce: no Glance API configured; the pipeline can only decide (replay)');
  return ctx.images;
}

/** Delete (or, in dry-run, record) each candidate Glance's listing gave; audit every action. */
async function act(ctx: PipelineContext, images: ImageService, { report, byId, passedOver }: Judgement): Promise<ActionRecord[]> {
  const { projectId } = report;
  // A dry run records each would-delete once, however many messages find the project over.
  const fresh = (ids: readonly string[]) => (ctx.mode === 'dry-run' ? ids.filter((id) => !ctx.wouldDelete.has(id)) : ids);
  const candidates = [...fresh(passedOver), ...fresh(report.toDelete)];
  const actions: ActionRecord[] = [];
  const announced: Promise<void>[] = [];
  const gone: OwnedImage[] = [];
  const actOn = async (imageId: string): Promise<void> => {
    const image = byId.get(imageId)!;
    // The listing already says so; kept as the last guard before a DELETE that cannot be undone.
    const verdict = verifyCandidate(image, projectId);
    let kind: ActionRecord['action'];
    let reason: string;
    if (!verdict.removable) {
      if (ctx.mode === 'dry-run') ctx.wouldDelete.set(imageId, true);
      [kind, reason] = ['skipped', verdict.reason];
    } else if (ctx.mode === 'dry-run') {
      ctx.wouldDelete.set(imageId, true);
      [kind, reason] = ['would-delete', `queued image past ${report.over.join(', ')} (dry-run)`];
    } else {
      const outcome = await images.deleteImage(imageId);
      if (outcome.result === 'refused') [kind, reason] = ['not-deletable', `Glance refused the delete with ${outcome.status}: ${outcome.reason}`];
      else if (outcome.result === 'gone') [kind, reason] = ['gone', 'Glance answered 404 to the delete'];
      else [kind, reason] = ['deleted', `queued image past ${report.over.join(', ')}`];
    }
    const action: ActionRecord = { atMs: ctx.clock(), projectId, imageId, action: kind, reason, over: report.over, usage: report.usage, limits: report.limits };
    actions.push(action);
    // Audited one by one, as they happen: a crash loses no record of a deletion. What only
    // informs (the outgoing notification, the ledger's tombstone) waits for the end of the
    // pass, so that a slot goes on to its next DELETE at Glance's pace.
    for (const a of await ctx.store.recordActions([action])) {
      ctx.log?.info({ ...a, mode: ctx.mode }, `image ${a.action}`);
      if (ctx.onAction) announced.push(Promise.resolve().then(() => ctx.onAction!(a)));
    }
    // Glance says the image is gone: the ledger stops counting it at the end of this pass, not
    // when (or if) the image.delete notification arrives.
    if (kind === 'deleted' || kind === 'gone') gone.push(image);
  };
  try {
    await forEachLimited(candidates, ctx.concurrency, actOn);
  } finally {
    if (gone.length > 0) {
      ctx.committed.forget(projectId);
      const now = ctx.clock();
      await ctx.store.applyEvents(gone.map((image) => tombstoneOf(recordFromEvent(eventFromGlance(image)), now)), now, { overwrite: true });
    }
    for (const r of await Promise.allSettled(announced)) {
      if (r.status === 'rejected') ctx.log?.warn({ projectId, err: (r.reason as Error)?.message }, 'announcing an action failed; it is in the audit all the same');
    }
  }
  return actions;
}

/**
 * Runs `fn` over `items` with at most `limit` running at once. Every item is tried even when one
 * fails (a half-abandoned act would go on deleting behind the caller's back); then the first
 * failure is thrown.
 */
async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const failures: unknown[] = [];
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!).catch((err: unknown) => void failures.push(err));
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failures.length > 0) throw failures[0];
}
