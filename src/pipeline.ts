import { ConfigError, errorCode } from './errors.js';
import { recordFromEvent, type ImageRecord } from './ledger/record.js';
import { countCorrections, repairFromListing, type Correction, type CorrectionKind } from './ledger/repair.js';
import { eventFromGlance, tombstoneOf, type GlanceImage, type OwnedImage } from './ledger/glance-image.js';
import { usageFromTotals, usageOf, type UsageTotals } from './ledger/usage.js';
import type { Logger } from './log.js';
import { DOOR_DEFAULTS, parseNotification, type DoorLimits, type ImageEvent } from './notification/parse.js';
import { createsByProject } from './quota/admission.js';
import { decide, isDeletable, recordsNeeded } from './quota/decide.js';
import type { LimitSource, ProjectLimits } from './quota/limits.js';
import type { Resource, Usage } from './quota/resources.js';
import { verifyCandidate } from './quota/verify.js';
import { applyIsolatingPoison } from './store/isolate.js';
import type { ActionRecord, LedgerStore } from './store/port.js';

/**
 * The one pipeline every door feeds (replay, consume, the functions, reconcile):
 *
 *   raw body -> parse -> ledger.apply (store, atomic) -> decide (estimate)
 *            -> Glance's listing of the project (the truth; overwrites the ledger) -> decide -> act -> audit
 *
 * A door adapts only its input and its acknowledgement. The bus is a trigger and an estimate:
 * anyone who can publish on Glance's exchange can forge or drop notifications, so every act is
 * decided on Glance's own listing, never on the ledger.
 */

export type MessageResult = 'applied' | 'duplicate' | 'ignored' | 'invalid';

export interface MessageOutcome {
  result: MessageResult;
  /** Why a message was ignored or invalid: for the log line and the dead-letter header. */
  reason?: string;
  event?: ImageEvent;
}

export interface IngestResult {
  /** One per body, in input order. */
  outcomes: MessageOutcome[];
  /** Projects whose ledger changed: the ones to decide for next. */
  projects: string[];
}

export interface ProjectReport {
  projectId: string;
  usage: Usage;
  limits: ProjectLimits;
  over: Resource[];
  toDelete: string[];
  exempt: boolean;
  /** `ledger`: the bus's estimate; `glance`: Glance's own listing, the only basis for an act. */
  basis: 'ledger' | 'glance';
  /** With basis `glance`: how the listing corrected the ledger, by kind (src/ledger/repair.ts). */
  corrected?: Partial<Record<CorrectionKind, number>>;
}

interface Judged {
  report: ProjectReport;
  byId: ReadonlyMap<string, OwnedImage>;
  /** Protected images the rule would otherwise have picked: audited as skipped. */
  passedOver: readonly string[];
}

/** Image ids a dry run remembers as already reported. */
const WOULD_DELETE_MEMORY = 100_000;

/**
 * Totals a batch committed are taken as the project's usage by the next `evaluate` of it for this
 * long; past it (or past this many projects waiting), `evaluate` reads the store.
 */
const COMMITTED_TOTALS_MS = 5_000;
const COMMITTED_TOTALS_MAX = 100_000;

/** What a DELETE did; `refused` carries Glance's status (403: protected, 409: in use) and message. */
export type DeleteOutcome = { result: 'deleted' } | { result: 'gone' } | { result: 'refused'; status: number; reason: string };

/** What the pipeline needs of Glance's API (src/openstack/glance.ts implements it). */
export interface ImageService {
  deleteImage(id: string): Promise<DeleteOutcome>;
  /**
   * Every image but deleted ones, of one owner or of everyone, all pages. An image it cannot read
   * is left out and reported to `onUnreadable`, never fails the listing.
   */
  listImages(query?: { owner?: string; onUnreadable?: (imageId: string, reason: string) => void }): AsyncIterable<GlanceImage>;
}

export type EnforcementMode = 'enforce' | 'dry-run';

export interface EnforcementReport extends ProjectReport {
  actions: ActionRecord[];
}

/** A project whose decision or act failed (Keystone, Glance or the store): the others went on. */
export interface ProjectFailure {
  projectId: string;
  error: Error;
}

/** How long the store keeps what only bounds it (MESSAGE_, AUDIT_, DELETED_IMAGE_RETENTION_SECONDS). */
export interface Retention {
  messagesMs: number;
  actionsMs: number;
  deadImagesMs: number;
}

/** The configuration's defaults (src/config.ts; a test keeps the two equal): 7 days, 90 days, 7 days. */
export const DEFAULT_RETENTION: Retention = { messagesMs: 604_800_000, actionsMs: 7_776_000_000, deadImagesMs: 604_800_000 };

export interface PipelineOptions {
  store: LedgerStore;
  limits: LimitSource;
  /** Glance's API; without it the pipeline decides but never acts (replay). */
  images?: ImageService;
  mode?: EnforcementMode;
  /** Candidates of one project verified and acted on at once. */
  concurrency?: number;
  /** Called once per audited action, after it is recorded (metrics, outgoing notifications). */
  onAction?: (action: ActionRecord) => void | Promise<void>;
  exemptProjects?: ReadonlySet<string>;
  log?: Logger;
  /** Milliseconds since the epoch; injected so tests and replays control time. */
  clock?: () => number;
  /** MAX_MESSAGE_BYTES and CLOCK_SKEW_SECONDS; the defaults when unset. */
  door?: DoorLimits;
  /** Called when Glance's listing corrected the ledger (metrics). */
  onCorrections?: (projectId: string, corrections: readonly Correction[]) => void;
  /** What `prune` keeps; DEFAULT_RETENTION when unset. */
  retention?: Retention;
}

export class Pipeline {
  /** Private: every door reaches the ledger through the pipeline's steps, never around them. */
  private readonly store: LedgerStore;
  private readonly limits: LimitSource;
  private readonly exempt: ReadonlySet<string>;
  private readonly log: Logger | undefined;
  private readonly clock: () => number;
  private readonly images: ImageService | undefined;
  readonly mode: EnforcementMode;
  private readonly concurrency: number;
  private readonly wouldDelete = new Set<string>();
  private readonly onAction: PipelineOptions['onAction'];
  private readonly onCorrections: PipelineOptions['onCorrections'];
  private readonly clockSkewMs: number;
  private readonly busy = new Map<string, Promise<void>>();
  private readonly door: DoorLimits | undefined;
  private readonly retention: Retention;
  /**
   * Per project, the totals the last batch that changed it committed (stores that return them,
   * `ApplyResult.totals`) and when: what `evaluate` would otherwise read back from the store, one
   * query per project, right after the batch wrote it. Taken once; dropped by any other write
   * this pipeline makes to the project (a repair from Glance, a tombstone).
   */
  private readonly committed = new Map<string, { totals: UsageTotals; atMs: number }>();

  constructor(options: PipelineOptions) {
    this.store = options.store;
    this.limits = options.limits;
    this.exempt = options.exemptProjects ?? new Set();
    this.log = options.log;
    this.clock = options.clock ?? Date.now;
    this.images = options.images;
    this.mode = options.mode ?? 'enforce';
    this.concurrency = options.concurrency ?? 4;
    this.onAction = options.onAction;
    this.door = options.door;
    this.onCorrections = options.onCorrections;
    this.retention = options.retention ?? DEFAULT_RETENTION;
    // A ledger time is believed as far ahead of now as the door lets one in.
    this.clockSkewMs = (options.door?.clockSkewSeconds ?? DOOR_DEFAULTS.clockSkewSeconds) * 1000;
  }

  /**
   * Parse a batch of raw bodies and apply the image events in one atomic store write. Invalid and
   * ignored bodies never fail the batch, nor does a message the store refuses for its data (it is
   * isolated by bisection and made invalid); a store outage rejects the whole call, so the caller
   * acknowledges nothing and the broker redelivers.
   *
   * @example
   *   const { outcomes } = await pipeline.ingest([delivery.content]);
   *   if (outcomes[0].result === 'invalid') deadLetter(delivery, outcomes[0].reason);
   */
  async ingest(bodies: readonly (Uint8Array | string)[]): Promise<IngestResult> {
    const outcomes: MessageOutcome[] = new Array(bodies.length);
    const events: ImageEvent[] = [];
    const positions: number[] = [];
    const now = this.clock();
    bodies.forEach((body, i) => {
      const parsed = parseNotification(body, now, this.door);
      if (parsed.kind === 'image') {
        events.push(parsed.event);
        positions.push(i);
      } else {
        outcomes[i] = { result: parsed.kind, reason: parsed.reason };
      }
    });
    if (events.length === 0) return { outcomes, projects: [] };
    // A message whose data the store refuses is isolated and made invalid (dead-lettered by the
    // door); it never holds up the messages behind it.
    const applied = await applyIsolatingPoison(this.store, events, this.clock());
    await this.endReservations(events, applied.outcomes);
    if (applied.totals && applied.totals.size > 0) {
      if (this.committed.size + applied.totals.size > COMMITTED_TOTALS_MAX) this.committed.clear();
      const atMs = this.clock();
      for (const [projectId, totals] of applied.totals) {
        // Re-inserted, so that the map stays in commit order.
        this.committed.delete(projectId);
        this.committed.set(projectId, { totals, atMs });
      }
    }
    applied.outcomes.forEach((result, k) => {
      outcomes[positions[k]!] = typeof result === 'string'
        ? { result, event: events[k]! }
        : { result: 'invalid', reason: `the ledger store refused it: ${result.refused}` };
    });
    return { outcomes, projects: applied.projects };
  }

  /**
   * The admission endpoint's reservations that the batch's image.creates fulfil. After the commit,
   * never before: for a moment both count, which can only refuse, never admit too many. A store
   * that fails here fails nothing else: the reservations end at their TTL instead.
   */
  private async endReservations(events: readonly ImageEvent[], outcomes: readonly unknown[]): Promise<void> {
    const creates = createsByProject(events, outcomes);
    if (creates.size === 0) return;
    try {
      await this.store.releaseReservations(creates, this.clock());
    } catch (err) {
      this.log?.warn({ err: (err as Error).message, projects: creates.size }, 'ending admission reservations failed; they end at ADMISSION_RESERVATION_SECONDS');
    }
  }

  /**
   * The projects to decide for after a batch, the same for every door: those whose ledger it
   * changed, and those named by its duplicates. A batch whose enforcement failed comes back whole
   * (redelivered, or retried); its messages are then duplicates that change nothing, and without
   * them the project would wait for the next reconcile. Deciding a project under its limits costs
   * no read of the store when the store returned the totals the batch committed for it
   * (`ApplyResult.totals`: every store here does), else one.
   */
  projectsAfter(result: IngestResult): string[] {
    const projects = new Set(result.projects);
    for (const o of result.outcomes) if (o?.result === 'duplicate' && o.event) projects.add(o.event.projectId);
    return [...projects].sort();
  }

  /** The pipeline's clock (ms): reconcile dates its listings with it. */
  now(): number {
    return this.clock();
  }

  /**
   * Usage, limits and the decision for one project, from the ledger: the estimate. Usage is the
   * totals the last batch that changed the project committed, when the store returned them and
   * they are recent (`committed`), or else read from the store; either way an act is decided on
   * Glance's listing only.
   */
  async evaluate(projectId: string): Promise<ProjectReport> {
    const [usage, limits] = await Promise.all([this.committedUsage(projectId) ?? this.store.usage(projectId), this.limits.limitsFor(projectId)]);
    const exempt = this.exempt.has(projectId);
    // Most messages leave a project under its limits: then no image needs to be read at all.
    const needed = recordsNeeded(usage, limits);
    const records = !needed ? [] : 'all' in needed ? await this.store.images(projectId) : await this.store.removableImages(projectId, needed.removable);
    const { over, toDelete } = decide(records, usage, limits, exempt);
    return { projectId, usage, limits, over, toDelete, exempt, basis: 'ledger' };
  }

  /**
   * The bus's estimate first: when the ledger says the project has candidates for deletion, the
   * act is decided on Glance's own listing of the project (`enforceOnGlance`), never on the
   * ledger. Forged or lost notifications can make the ledger wrong; they cannot make it delete.
   */
  async enforce(projectId: string): Promise<EnforcementReport> {
    const estimate = await this.evaluate(projectId);
    if (estimate.toDelete.length === 0 || !this.images) return { ...estimate, actions: [] };
    // A dry run sees the same candidates on every message of a flood: Glance is asked once for them.
    if (this.mode === 'dry-run' && estimate.toDelete.every((id) => this.wouldDelete.has(id))) return { ...estimate, actions: [] };
    this.log?.info({ projectId, usage: estimate.usage, limits: estimate.limits, over: estimate.over, candidates: estimate.toDelete.length }, 'ledger says over quota; asking Glance');
    return this.enforceOnGlance(projectId);
  }

  /**
   * `enforce` for each project, one after the other. A failure (Keystone, Glance, the store) is
   * collected and logged, and the projects after it are still enforced: the door decides what a
   * failure means for its acknowledgement (a function fails its batch, the worker retries).
   */
  async enforceAll(projects: readonly string[]): Promise<{ reports: EnforcementReport[]; failures: ProjectFailure[] }> {
    const reports: EnforcementReport[] = [];
    const failures: ProjectFailure[] = [];
    for (const projectId of projects) {
      try {
        reports.push(await this.enforce(projectId));
      } catch (err) {
        const error = err instanceof Error ? err : new Error(String(err));
        this.log?.warn({ projectId, err: error.message, kind: error.name, code: errorCode(error) }, 'enforcement failed');
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
  async enforceOnGlance(projectId: string): Promise<EnforcementReport> {
    const images = this.requireImages();
    return this.oneAtATime(projectId, async () => {
      const listedAtMs = this.clock();
      const listing: OwnedImage[] = [];
      for await (const image of images.listImages({ owner: projectId })) if (image.owner === projectId) listing.push(image as OwnedImage);
      const corrected = await this.repair(projectId, listing, listedAtMs);
      // About to delete: a limit raised a moment ago must count, so the limits are read afresh
      // (rate-limited by the source) rather than from the table's last refresh.
      const limits = this.limits.refresh ? await this.limits.refresh(projectId) : await this.limits.limitsFor(projectId);
      const judged = this.judge(projectId, listing, corrected, limits);
      return { ...judged.report, actions: await this.act(images, judged) };
    });
  }

  /**
   * Reconcile's step for one project of a whole-cloud listing: overwrite the ledger from it and
   * return the decision on it. The act is left to `enforceOnGlance`, which lists the project
   * afresh: a large cloud's listing can be minutes old by the time its last project is reached.
   */
  async applyListing(projectId: string, listing: readonly OwnedImage[], listedAtMs: number, listedElsewhere?: ReadonlySet<string>): Promise<ProjectReport> {
    return this.oneAtATime(projectId, async () => {
      const owned = listing.filter((i) => i.owner === projectId);
      const corrected = await this.repair(projectId, owned, listedAtMs, listedElsewhere);
      return this.judge(projectId, owned, corrected, await this.limits.limitsFor(projectId)).report;
    });
  }

  /** The project's committed totals as usage, taken once, if they are recent enough. */
  private committedUsage(projectId: string): Usage | undefined {
    const c = this.committed.get(projectId);
    if (!c) return undefined;
    this.committed.delete(projectId);
    return this.clock() - c.atMs <= COMMITTED_TOTALS_MS ? usageFromTotals(c.totals) : undefined;
  }

  private requireImages(): ImageService {
    if (!this.images) throw new ConfigError('enforce: no Glance API configured; the pipeline can only decide (replay)');
    return this.images;
  }

  /** Glance's state over the ledger's, outright; the disagreements are counted and logged. */
  private async repair(
    projectId: string,
    listing: readonly OwnedImage[],
    listedAtMs: number,
    listedElsewhere?: ReadonlySet<string>,
  ): Promise<Partial<Record<CorrectionKind, number>>> {
    const nowMs = this.clock();
    const ledger = await this.store.images(projectId);
    const { events, corrections } = repairFromListing(projectId, ledger, listing, { listedAtMs, nowMs, skewMs: this.clockSkewMs, ...(listedElsewhere ? { listedElsewhere } : {}) });
    this.committed.delete(projectId);
    if (events.length > 0) await this.store.applyEvents(events, nowMs, { overwrite: true });
    const counts = countCorrections(corrections);
    if (corrections.length === 0) return counts;
    const sample = corrections.slice(0, 10).map((c) => `${c.kind}:${c.imageId}`);
    this.log?.warn({ projectId, corrections: counts, sample }, "ledger corrected from Glance's listing: notifications for this project were lost or forged");
    this.onCorrections?.(projectId, corrections);
    return counts;
  }

  /** Usage and the decision on Glance's listing alone. */
  private judge(projectId: string, listing: readonly OwnedImage[], corrected: Partial<Record<CorrectionKind, number>>, limits: ProjectLimits): Judged {
    const byId = new Map<string, OwnedImage>();
    const records: ImageRecord[] = [];
    for (const image of listing) {
      byId.set(image.id, image);
      records.push(recordFromEvent(eventFromGlance(image)));
    }
    const usage = usageOf(records);
    const exempt = this.exempt.has(projectId);
    const { over, toDelete } = decide(records, usage, limits, exempt, isDeletable);
    // Protected images the rule would have picked first: recorded as skipped, with the reason,
    // while the next deletable images go in their place.
    const chosen = new Set(toDelete);
    const passedOver = over.length === 0 ? [] : decide(records, usage, limits, exempt).toDelete.filter((id) => !chosen.has(id) && byId.get(id)?.protected);
    if (over.length > 0) this.log?.info({ projectId, usage, limits, over, candidates: toDelete.length, exempt }, 'Glance confirms: project over quota');
    return { report: { projectId, usage, limits, over, toDelete, exempt, basis: 'glance', corrected }, byId, passedOver };
  }

  /** Delete (or, in dry-run, record) each candidate Glance's listing gave; audit every action. */
  private async act(images: ImageService, { report, byId, passedOver }: Judged): Promise<ActionRecord[]> {
    const { projectId } = report;
    // A dry run records each would-delete once, however many messages find the project over.
    const fresh = (ids: readonly string[]) => (this.mode === 'dry-run' ? ids.filter((id) => !this.wouldDelete.has(id)) : ids);
    const candidates = [...fresh(passedOver), ...fresh(report.toDelete)];
    const actions: ActionRecord[] = [];
    const actOn = async (imageId: string): Promise<void> => {
      const image = byId.get(imageId)!;
      // The listing already says so; kept as the last guard before a DELETE that cannot be undone.
      const verdict = verifyCandidate(image, projectId);
      let kind: ActionRecord['action'];
      let reason: string;
      if (!verdict.removable) {
        if (this.mode === 'dry-run') this.rememberWouldDelete(imageId);
        [kind, reason] = ['skipped', verdict.reason];
      } else if (this.mode === 'dry-run') {
        this.rememberWouldDelete(imageId);
        [kind, reason] = ['would-delete', `queued image past ${report.over.join(', ')} (dry-run)`];
      } else {
        const outcome = await images.deleteImage(imageId);
        if (outcome.result === 'refused') [kind, reason] = ['not-deletable', `Glance refused the delete with ${outcome.status}: ${outcome.reason}`];
        else if (outcome.result === 'gone') [kind, reason] = ['gone', 'Glance answered 404 to the delete'];
        else [kind, reason] = ['deleted', `queued image past ${report.over.join(', ')}`];
      }
      const action: ActionRecord = { atMs: this.clock(), projectId, imageId, action: kind, reason, over: report.over, usage: report.usage, limits: report.limits };
      actions.push(action);
      // Audited one by one, as they happen: a crash loses no record of a deletion. What only
      // informs (the outgoing notification, the ledger's tombstone) waits for the end of the
      // pass, so that a slot goes on to its next DELETE at Glance's pace (bench:flood).
      for (const a of await this.store.recordActions([action])) {
        this.log?.info({ ...a, mode: this.mode }, `image ${a.action}`);
        if (this.onAction) announced.push(Promise.resolve().then(() => this.onAction!(a)));
      }
      // Glance says the image is gone: the ledger stops counting it at the end of this pass, not
      // when (or if) the image.delete notification arrives.
      if (kind === 'deleted' || kind === 'gone') gone.push(image);
    };
    const announced: Promise<void>[] = [];
    const gone: OwnedImage[] = [];
    try {
      await forEachLimited(candidates, this.concurrency, actOn);
    } finally {
      if (gone.length > 0) {
        this.committed.delete(projectId);
        const now = this.clock();
        await this.store.applyEvents(gone.map((image) => tombstoneOf(recordFromEvent(eventFromGlance(image)), now)), now, { overwrite: true });
      }
      for (const r of await Promise.allSettled(announced)) {
        if (r.status === 'rejected') this.log?.warn({ projectId, err: (r.reason as Error)?.message }, 'announcing an action failed; it is in the audit all the same');
      }
    }
    return actions;
  }

  /** Bounded: a dry run over a long flood must not grow without end. */
  private rememberWouldDelete(imageId: string): void {
    this.wouldDelete.add(imageId);
    if (this.wouldDelete.size > WOULD_DELETE_MEMORY) this.wouldDelete.delete(this.wouldDelete.values().next().value as string);
  }

  /**
   * One decision on Glance at a time per project in this process: the consumer's worker and a
   * reconcile must not both delete from two listings of the same moment.
   */
  private async oneAtATime<T>(projectId: string, work: () => Promise<T>): Promise<T> {
    const before = this.busy.get(projectId);
    const run = (before ?? Promise.resolve()).then(work);
    const tail = run.then(() => {}, () => {});
    this.busy.set(projectId, tail);
    try {
      return await run;
    } finally {
      if (this.busy.get(projectId) === tail) this.busy.delete(projectId);
    }
  }

  /** Every project the ledger knows (reconcile adds them to Glance's owners). */
  projects(): Promise<string[]> {
    return this.store.projects();
  }

  /** The ledger's records of one project, as the ledger holds them (status, tests). */
  records(projectId: string): Promise<ImageRecord[]> {
    return this.store.images(projectId);
  }

  /** The ledger's usage of one project (Glance's definitions, src/ledger/usage.ts). */
  usage(projectId: string): Promise<Usage> {
    return this.store.usage(projectId);
  }

  /**
   * A small named value kept beside the ledger, e.g. where the scheduled reconcile stopped
   * (`reconcile.cursor`); `undefined` until first set.
   *
   * @example
   *   await pipeline.setState('reconcile.cursor', projectId);
   *   const after = (await pipeline.state('reconcile.cursor')) ?? '';
   */
  state(key: string): Promise<string | undefined> {
    return this.store.getState(key);
  }

  /** Sets (or replaces) the value of `key`; see `state`. */
  setState(key: string, value: string): Promise<void> {
    return this.store.setState(key, value);
  }

  /** Where the ledger is, credentials redacted (the store's description): for log lines. */
  get ledgerDescription(): string {
    return this.store.description;
  }

  /** The audit trail, oldest first: every deletion, would-delete and skip, with its reason. */
  audit(query: { projectId?: string; sinceMs?: number } = {}): Promise<ActionRecord[]> {
    return this.store.actions(query);
  }

  /**
   * Keep the store bounded: processed message ids past their retention (dedupe stays exact within
   * it, and merging is idempotent beyond it), audit records past theirs, and records of deleted
   * images past theirs (a reconcile has since confirmed with Glance what they said). Every full
   * reconcile pass ends with it, whichever door ran the pass.
   */
  async prune(): Promise<{ messages: number; actions: number; deadImages: number }> {
    const now = this.clock();
    return {
      messages: await this.store.forgetMessagesBefore(now - this.retention.messagesMs),
      actions: await this.store.forgetActionsBefore(now - this.retention.actionsMs),
      deadImages: await this.store.forgetDeadImagesBefore(now - this.retention.deadImagesMs),
    };
  }
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
