import { ConfigError, LimitsUnavailableError, ProjectBusyError, errorCode } from '../errors.js';
import { recordFromGlance, tombstoneOf, type OwnedImage } from '../ledger/glance-image.js';
import type { ImageRecord } from '../ledger/record.js';
import { decide, recordsNeeded, type RecordsNeeded } from '../quota/decide.js';
import { confirmLimits } from '../quota/limits.js';
import type { Usage } from '../quota/resources.js';
import { verifyCandidate } from '../quota/verify.js';
import type { ActionKind, ActionRecord, LedgerStore } from '../store/port.js';
import type { PipelineContext } from './context.js';
import { judge, type Judgement } from './judge.js';
import { Lease } from './lease.js';
import { repair } from './listing.js';
import type { EnforcementReport, ImageService, ProjectFailure, ProjectReport } from './ports.js';

/**
 * Usage, limits and the decision for one project, from the ledger: the estimate. Usage is the
 * totals the last batch that changed the project committed, when the store returned them and
 * they are recent, or else `read` (the caller's read of a moment ago) or a read of the store;
 * either way an act is decided on Glance's listing only.
 */
export async function evaluate(ctx: PipelineContext, projectId: string, read?: Usage): Promise<ProjectReport> {
  const [usage, limits] = await Promise.all([
    ctx.committed.take(projectId, ctx.clock()) ?? read ?? ctx.store.usage(projectId),
    ctx.limits.limitsFor(projectId),
  ]);
  const exempt = ctx.exempt.has(projectId);
  const nowSeconds = Math.floor(ctx.clock() / 1000);
  // Most messages leave a project under its limits: then no image needs to be read at all.
  const needed = recordsNeeded(usage, limits, nowSeconds);
  const records = needed ? await readNeeded(ctx.store, projectId, needed) : [];
  const { over, toDelete } = decide(records, usage, limits, { exempt, nowSeconds });
  const report: ProjectReport = { projectId, usage, limits, over, toDelete, exempt, basis: 'ledger' };
  ctx.onDecision?.(report);
  return report;
}

/** The records `recordsNeeded` names, each once: the two reads overlap where a removable image is in the window. */
async function readNeeded(store: LedgerStore, projectId: string, needed: RecordsNeeded): Promise<ImageRecord[]> {
  const [removable, recent] = await Promise.all([
    needed.removable > 0 ? store.removableImages(projectId, needed.removable) : [],
    needed.createdSince === undefined ? [] : store.imagesCreatedSince(projectId, needed.createdSince),
  ]);
  if (recent.length === 0) return removable;
  const byId = new Map(recent.map((r) => [r.imageId, r]));
  for (const r of removable) byId.set(r.imageId, r);
  return [...byId.values()];
}

/**
 * The bus's estimate first: when the ledger says the project has candidates for deletion, the
 * act is decided on Glance's own listing of the project (`enforceOnGlance`), never on the
 * ledger. Forged or lost notifications can make the ledger wrong; they cannot make it delete.
 */
export async function enforce(ctx: PipelineContext, projectId: string, usage?: Usage): Promise<EnforcementReport> {
  const estimate = await evaluate(ctx, projectId, usage);
  if (estimate.toDelete.length === 0 || !ctx.images) return { ...estimate, actions: [] };
  // A dry run sees the same candidates on every message of a flood: Glance is asked once for them.
  if (ctx.mode === 'dry-run' && estimate.toDelete.every((id) => ctx.reported.get(id) === 'would-delete')) return { ...estimate, actions: [] };
  ctx.log?.info(
    { projectId, usage: estimate.usage, limits: estimate.limits, over: estimate.over, candidates: estimate.toDelete.length },
    'ledger says over quota; asking Glance',
  );
  return enforceOnGlance(ctx, projectId);
}

/** What `enforceAll` did: each project is in exactly one of the three. */
export interface EnforceAllResult {
  reports: EnforcementReport[];
  failures: ProjectFailure[];
  /**
   * Projects not decided, and not failed either: busy (another replica decides them, or they were
   * listed within ENFORCE_INTERVAL_SECONDS), or not started before the deadline. The door hands
   * them back to be delivered again.
   */
  deferred: string[];
  /** When the first of the busy projects among `deferred` can be decided (ms from now); absent when none was busy. */
  busyRetryMs?: number;
}

/**
 * `enforce` for each project, one after the other. A failure (Keystone, Glance, the store) is
 * collected and logged, and the projects after it are still enforced: the door decides what a
 * failure means for its acknowledgement (a function fails its batch, the worker retries). With
 * `deadlineMs` (the pipeline's clock), a project not started by then is deferred, not failed: a
 * function stops in time to acknowledge what it did.
 *
 * @example
 *   const { failures, deferred } = await pipeline.enforceAll(projects, { deadlineMs: Date.now() + context.getRemainingTimeInMillis() - 10_000 });
 */
export async function enforceAll(ctx: PipelineContext, projects: readonly string[], options: { deadlineMs?: number } = {}): Promise<EnforceAllResult> {
  const reports: EnforcementReport[] = [];
  const failures: ProjectFailure[] = [];
  const deferred: string[] = [];
  let busyRetryMs: number | undefined;
  for (const [i, projectId] of projects.entries()) {
    if (options.deadlineMs !== undefined && ctx.clock() >= options.deadlineMs) {
      deferred.push(...projects.slice(i));
      ctx.log?.info({ projects: projects.length - i, first: projectId }, 'deadline reached: projects left undecided, deferred');
      break;
    }
    try {
      reports.push(await enforce(ctx, projectId));
    } catch (err) {
      if (err instanceof ProjectBusyError) {
        deferred.push(projectId);
        busyRetryMs = Math.min(busyRetryMs ?? err.retryAfterMs, err.retryAfterMs);
        continue;
      }
      const error = err instanceof Error ? err : new Error(String(err));
      ctx.log?.warn({ projectId, err: error.message, kind: error.name, code: errorCode(error) }, 'enforcement failed');
      failures.push({ projectId, error });
    }
  }
  return { reports, failures, deferred, ...(busyRetryMs === undefined ? {} : { busyRetryMs }) };
}

/**
 * The truth path: list the project in Glance (all pages), overwrite the ledger with what Glance
 * says, compute usage with Glance's definitions from the listing, and delete at most (Glance's
 * count - limit) images, the newest queued ones by Glance's `created_at`, then id. Acting needs
 * limits the configured source itself gave (`LimitSource.confirm`): on any other, the project is
 * reported and `LimitsUnavailableError` thrown, so that the door retries it later.
 */
export function enforceOnGlance(ctx: PipelineContext, projectId: string): Promise<EnforcementReport> {
  const images = requireImages(ctx);
  return ctx.locks.run(projectId, async () => {
    // One decision per project at a time across replicas, and one listing per interval: the
    // lease is taken before anything is listed, and kept until the interval is over.
    const startedAtMs = ctx.clock();
    const name = `project:${projectId}`;
    const lease = await Lease.take(ctx.store, name, ctx.lease.replicaId, ctx.lease.ttlMs, ctx.clock, ctx.log);
    if (!lease) throw new ProjectBusyError(projectId, await busyFor(ctx, name));
    try {
      const listedAtMs = ctx.clock();
      const listing: OwnedImage[] = [];
      for await (const image of images.listImages({ owner: projectId })) if (image.owner === projectId) listing.push(image as OwnedImage);
      const corrected = await repair(ctx, projectId, listing, listedAtMs);
      // About to delete: a limit raised a moment ago must count, so the limits are read afresh
      // (rate-limited by the source) rather than from the table's last refresh.
      const confirmed = await confirmLimits(ctx.limits, projectId);
      const judged = judge(ctx, projectId, listing, corrected, confirmed.limits);
      if (!confirmed.trusted && judged.report.toDelete.length > 0) {
        ctx.log?.warn(
          { projectId, usage: judged.report.usage, over: judged.report.over, candidates: judged.report.toDelete.length, reason: confirmed.reason },
          'project over quota, but its limits are not from the configured source: nothing is deleted until they are',
        );
        throw new LimitsUnavailableError(
          `limits of ${projectId} unavailable: ${confirmed.reason}; ${judged.report.toDelete.length} candidates left in place until Keystone answers`,
        );
      }
      const report = { ...judged.report, actions: await act(ctx, images, judged, lease) };
      await lease.end(startedAtMs + ctx.lease.intervalMs);
      return report;
    } catch (err) {
      // A failed decision gives the project back at once: its retries are paced by the door
      // (the worker's backoff, a function's redelivery), and another replica may do better.
      await lease.end().catch((e: Error) => ctx.log?.warn({ projectId, err: e.message }, 'releasing the lease failed; it expires'));
      throw err;
    }
  });
}

/** Looked at again no sooner than this after a refused lease, however soon it ends. */
const BUSY_AT_LEAST_MS = 100;

/**
 * When to look at a busy project again: when its lease ends, by the store. A decision keeps its
 * lease until its interval is over, counted from its start: after a long decision (a flood's
 * deletions) that is soon, and waiting a whole interval more left the flood to grow meanwhile.
 * The holder's clock set the end, so a clock behind it only looks again too early, and is
 * refused again with the time left. At most one interval, or one lease, whichever is shorter
 * (a decision still running may end at any moment; a kept interval ends within one interval).
 */
async function busyFor(ctx: PipelineContext, name: string): Promise<number> {
  const guess = Math.min(ctx.lease.intervalMs, ctx.lease.ttlMs);
  // Released since it was refused: at once, nearly. The store did not answer: the guess.
  const until = await ctx.store.leaseUntil(name).then(
    (at) => at ?? 0,
    () => Number.POSITIVE_INFINITY,
  );
  return Math.max(BUSY_AT_LEAST_MS, Math.min(guess, until - ctx.clock()));
}

export function requireImages(ctx: PipelineContext): ImageService {
  if (!ctx.images) throw new ConfigError('enforce: no Glance API configured; the pipeline can only decide (replay)');
  return ctx.images;
}

/** What one candidate came to: the audit's kind and reason, and whether Glance no longer has it. */
interface Outcome {
  kind: ActionKind;
  reason: string;
  gone: boolean;
}

/**
 * Each candidate of the decision is read back from Glance right before the act (the listing may be
 * seconds old: an upload may have started since), and acted on only if Glance still says it is
 * this project's and queued: unprotected first if its owner protected it, then deleted (in
 * dry-run, recorded). Every outcome is audited with what Glance said; one that leaves the image in
 * place (a would-delete, a kept protected image) once per image, not at every listing.
 */
async function act(ctx: PipelineContext, images: ImageService, { report, byId }: Judgement, lease: Lease): Promise<ActionRecord[]> {
  const { projectId } = report;
  // Another replica may hold the project now: it decides from its own listing, not us.
  const assertHeld = () => {
    if (lease.lost) throw new ProjectBusyError(projectId, ctx.lease.ttlMs, `project ${projectId}: lease lost mid-decision, stopped before the next DELETE`);
  };
  const past = `queued image past ${report.over.join(', ')}`;
  // Already audited as left in place, and the listing shows nothing new: no GET, no second row.
  const reportedBefore = (id: string) => {
    const kind = ctx.reported.get(id);
    return kind === 'would-delete' ? ctx.mode === 'dry-run' : kind === 'protected' && byId.get(id)?.protected === true && ctx.protectedPolicy === 'report';
  };
  const candidates = report.toDelete.filter((id) => !reportedBefore(id));
  const actions: ActionRecord[] = [];
  const announced: Promise<void>[] = [];
  const gone: OwnedImage[] = [];

  const decideOn = async (imageId: string): Promise<Outcome> => {
    const now = await images.getImage(imageId);
    const said = now ? `Glance said: ${now.status}, owner ${now.owner ?? 'none'}${now.protected ? ', protected' : ''}` : 'Glance said: 404';
    const verdict = verifyCandidate(now, projectId, ctx.protectedPolicy);
    if (!verdict.removable) return { kind: verdict.kind, reason: `${verdict.reason} (${said})`, gone: now === null };
    if (ctx.mode === 'dry-run')
      return {
        kind: 'would-delete',
        reason: `${past}${verdict.unprotectFirst ? ', protected: would be unprotected first' : ''} (dry-run; ${said})`,
        gone: false,
      };
    assertHeld();
    if (verdict.unprotectFirst) {
      const cleared = await images.unprotectImage(imageId);
      if (cleared.result === 'gone') return { kind: 'gone', reason: 'Glance answered 404 to clearing its protected flag', gone: true };
      if (cleared.result === 'refused')
        return { kind: 'not-deletable', reason: `Glance refused to clear its protected flag with ${cleared.status}: ${cleared.reason}`, gone: false };
    }
    assertHeld();
    const deleted = await images.deleteImage(imageId);
    if (deleted.result === 'refused')
      return { kind: 'not-deletable', reason: `Glance refused the delete with ${deleted.status}: ${deleted.reason}`, gone: false };
    if (deleted.result === 'gone') return { kind: 'gone', reason: 'Glance answered 404 to the delete', gone: true };
    return {
      kind: 'deleted',
      reason: `${past}${verdict.unprotectFirst ? '; its protected flag was cleared first (PROTECTED_QUEUED_IMAGES=unprotect)' : ''} (${said})`,
      gone: true,
    };
  };

  const actOn = async (imageId: string): Promise<void> => {
    const { kind, reason, gone: isGone } = await decideOn(imageId);
    if (kind === 'would-delete' || kind === 'protected') ctx.reported.set(imageId, kind);
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
    if (isGone) gone.push(byId.get(imageId)!);
  };
  try {
    await forEachLimited(candidates, ctx.concurrency, actOn);
  } finally {
    if (gone.length > 0) {
      ctx.committed.forget(projectId);
      const now = ctx.clock();
      await ctx.store.applyEvents(
        gone.map((image) => tombstoneOf(recordFromGlance(image), now)),
        now,
        { overwrite: true },
      );
    }
    for (const r of await Promise.allSettled(announced)) {
      if (r.status === 'rejected')
        ctx.log?.warn({ projectId, err: (r.reason as Error)?.message }, 'announcing an action failed; it is in the audit all the same');
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
