import type { ImageRecord } from './ledger/record.js';
import { tombstoneOf, type GlanceImageState } from './ledger/synthetic.js';
import type { Logger } from './log.js';
import type { ImageEvent } from './notification/parse.js';
import { parseNotification, type DoorLimits } from './notification/parse.js';
import { decide, recordsNeeded } from './quota/decide.js';
import type { ProjectLimits } from './quota/limits.js';
import type { Resource, Usage } from './quota/resources.js';
import type { LimitSource } from './quota/static-limits.js';
import { verifyCandidate } from './quota/verify.js';
import type { ActionRecord, LedgerStore } from './store/port.js';

/**
 * The one pipeline every door feeds (replay, consume, the functions, reconcile):
 *
 *   raw body -> parse -> ledger.apply (store, atomic) -> decide -> verify with Glance -> act -> audit
 *
 * A door adapts only its input and its acknowledgement.
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
}

export type DeleteOutcome = { result: 'deleted' } | { result: 'gone' } | { result: 'refused'; status: number; reason: string };

/** What the pipeline needs of Glance's API (src/openstack/glance.ts implements it). */
export interface ImageService {
  getImage(id: string): Promise<GlanceImageState | null>;
  deleteImage(id: string): Promise<DeleteOutcome>;
  /** Every image but deleted ones, of one owner or of everyone, all pages. */
  listImages(query?: { owner?: string }): AsyncIterable<GlanceImageState>;
}

export type EnforcementMode = 'enforce' | 'dry-run';

export interface EnforcementReport extends ProjectReport {
  actions: ActionRecord[];
}

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
}

export class Pipeline {
  readonly store: LedgerStore;
  private readonly limits: LimitSource;
  private readonly exempt: ReadonlySet<string>;
  private readonly log: Logger | undefined;
  private readonly clock: () => number;
  private readonly images: ImageService | undefined;
  readonly mode: EnforcementMode;
  private readonly concurrency: number;
  private readonly wouldDelete = new Set<string>();
  private readonly onAction: PipelineOptions['onAction'];
  private readonly door: DoorLimits | undefined;

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
  }

  /**
   * Parse a batch of raw bodies and apply the image events in one atomic store write. Invalid and
   * ignored bodies never fail the batch; a store failure rejects the whole call, so the caller
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
    bodies.forEach((body, i) => {
      const parsed = parseNotification(body, this.clock(), this.door);
      if (parsed.kind === 'image') {
        events.push(parsed.event);
        positions.push(i);
      } else {
        outcomes[i] = { result: parsed.kind, reason: parsed.reason };
      }
    });
    if (events.length === 0) return { outcomes, projects: [] };
    const applied = await this.store.applyEvents(events, this.clock());
    applied.outcomes.forEach((result, k) => {
      outcomes[positions[k]!] = { result, event: events[k]! };
    });
    return { outcomes, projects: applied.projects };
  }

  /** Usage, limits and the decision for one project, read from the store. */
  async evaluate(projectId: string): Promise<ProjectReport> {
    return (await this.decideFor(projectId)).report;
  }

  /** The decision, with the records it was made from (every candidate is among them). */
  private async decideFor(projectId: string): Promise<{ report: ProjectReport; records: ImageRecord[] }> {
    const [usage, limits] = await Promise.all([this.store.usage(projectId), this.limits.limitsFor(projectId)]);
    const exempt = this.exempt.has(projectId);
    // Most messages leave a project under its limits: then no image needs to be read at all.
    const needed = recordsNeeded(usage, limits);
    const records = !needed ? [] : 'all' in needed ? await this.store.images(projectId) : await this.store.removableImages(projectId, needed.removable);
    const { over, toDelete } = decide(records, usage, limits, exempt);
    if (over.length > 0) this.log?.info({ projectId, usage, limits, over, candidates: toDelete.length, exempt }, 'project over quota');
    return { report: { projectId, usage, limits, over, toDelete, exempt }, records };
  }

  /**
   * Decide, then verify every candidate with Glance and act on it: delete it (or, in dry-run,
   * record that it would be deleted). Every action is audited in the store and logged. Glance's
   * confirmation that an image is gone is applied to the ledger at once.
   */
  async enforce(projectId: string): Promise<EnforcementReport> {
    const { report, records } = await this.decideFor(projectId);
    if (report.toDelete.length === 0) return { ...report, actions: [] };
    const images = this.images;
    if (!images) throw new Error('enforce: no Glance API configured; the pipeline can only decide (replay)');
    const known = new Map(records.map((r) => [r.imageId, r]));
    // A dry run sees the same candidates on every message of a flood; each is verified once.
    const candidates = this.mode === 'dry-run' ? report.toDelete.filter((id) => !this.wouldDelete.has(id)) : report.toDelete;
    if (candidates.length === 0) return { ...report, actions: [] };
    // Many candidates: one listing of the project answers for all of them (a flood of 200 would
    // otherwise cost 200 GETs). An image it does not show is asked for by id.
    const listed = candidates.length > 1 ? await this.listing(images, projectId) : new Map<string, GlanceImageState>();
    const actions: ActionRecord[] = [];
    const actOn = async (imageId: string): Promise<void> => {
      const image = listed.get(imageId) ?? (await images.getImage(imageId));
      const verdict = verifyCandidate(image, projectId);
      let kind: ActionRecord['action'];
      let reason: string;
      if (!verdict.removable) {
        [kind, reason] = ['skipped', verdict.reason];
      } else if (this.mode === 'dry-run') {
        this.wouldDelete.add(imageId);
        [kind, reason] = ['would-delete', `queued image past ${report.over.join(', ')} (dry-run)`];
      } else {
        const outcome = await images.deleteImage(imageId);
        if (outcome.result === 'refused') [kind, reason] = ['not-deletable', `Glance refused the delete with ${outcome.status}: ${outcome.reason}`];
        else if (outcome.result === 'gone') [kind, reason] = ['gone', 'Glance answered 404 to the delete'];
        else [kind, reason] = ['deleted', `queued image past ${report.over.join(', ')}`];
      }
      const action: ActionRecord = { atMs: this.clock(), projectId, imageId, action: kind, reason, over: report.over, usage: report.usage, limits: report.limits };
      actions.push(action);
      // Audited and applied one by one, as they happen: a crash loses no record of a deletion.
      for (const a of await this.store.recordActions([action])) {
        this.log?.info({ ...a, mode: this.mode }, `image ${a.action}`);
        await this.onAction?.(a);
      }
      // Glance says the image is gone: the ledger stops counting it now, not when (or if) the
      // image.delete notification arrives.
      const record = known.get(imageId);
      if (record && (kind === 'deleted' || kind === 'gone' || !image)) {
        await this.store.applyEvents([tombstoneOf(record, this.clock())], this.clock(), { dedupe: false });
      }
    };
    await forEachLimited(candidates, this.concurrency, actOn);
    return { ...report, actions };
  }

  private async listing(images: ImageService, projectId: string): Promise<Map<string, GlanceImageState>> {
    const out = new Map<string, GlanceImageState>();
    for await (const image of images.listImages({ owner: projectId })) out.set(image.id, image);
    return out;
  }

  /**
   * Keep the store bounded: processed message ids past their retention (dedupe stays exact within
   * it, and merging is idempotent beyond it) and audit records past theirs. Run once per reconcile.
   */
  async forgetOld(retention: { messagesMs: number; actionsMs: number }): Promise<{ messages: number; actions: number }> {
    const now = this.clock();
    return {
      messages: await this.store.forgetMessagesBefore(now - retention.messagesMs),
      actions: await this.store.forgetActionsBefore(now - retention.actionsMs),
    };
  }
}

/** Runs `fn` over `items` with at most `limit` running at once; rejects with the first failure. */
async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
