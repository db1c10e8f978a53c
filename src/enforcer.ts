import type { ImageRecord } from './ledger/record.js';
import { tombstoneOf, type GlanceImageState } from './ledger/synthetic.js';
import type { Logger } from './log.js';
import type { ImageEvent } from './notification/parse.js';
import { parseNotification } from './notification/parse.js';
import { decide, needsRecords } from './quota/decide.js';
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
  private readonly onAction: PipelineOptions['onAction'];

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
      const parsed = parseNotification(body);
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
    const [usage, limits] = await Promise.all([this.store.usage(projectId), this.limits.limitsFor(projectId)]);
    const exempt = this.exempt.has(projectId);
    // Most messages leave a project under its limits: then no image needs to be read at all.
    const records = needsRecords(usage, limits) ? await this.store.images(projectId) : [];
    const { over, toDelete } = decide(records, usage, limits, exempt);
    if (over.length > 0) this.log?.info({ projectId, usage, limits, over, candidates: toDelete.length, exempt }, 'project over quota');
    return { projectId, usage, limits, over, toDelete, exempt };
  }

  /**
   * Decide, then verify every candidate with Glance and act on it: delete it (or, in dry-run,
   * record that it would be deleted). Every action is audited in the store and logged. Glance's
   * confirmation that an image is gone is applied to the ledger at once.
   */
  async enforce(projectId: string): Promise<EnforcementReport> {
    const report = await this.evaluate(projectId);
    if (report.toDelete.length === 0) return { ...report, actions: [] };
    const images = this.images;
    if (!images) throw new Error('enforce: no Glance API configured; the pipeline can only decide (replay)');
    const known = new Map((await this.store.images(projectId)).map((r) => [r.imageId, r]));
    const actions: ActionRecord[] = [];
    const gone: ImageRecord[] = [];
    const actOn = async (imageId: string): Promise<void> => {
      const action = (kind: ActionRecord['action'], reason: string): void => {
        actions.push({ atMs: this.clock(), projectId, imageId, action: kind, reason, over: report.over, usage: report.usage, limits: report.limits });
        if ((kind === 'deleted' || kind === 'gone') && known.has(imageId)) gone.push(known.get(imageId)!);
      };
      const image = await images.getImage(imageId);
      const verdict = verifyCandidate(image, projectId);
      if (!verdict.removable) {
        action('skipped', verdict.reason);
        // Glance has no such image: the ledger must stop counting it, or it stays a candidate.
        if (!image && known.has(imageId)) gone.push(known.get(imageId)!);
        return;
      }
      if (this.mode === 'dry-run') return action('would-delete', `queued image past ${report.over.join(', ')} (dry-run)`);
      const outcome = await images.deleteImage(imageId);
      if (outcome.result === 'refused') return action('not-deletable', `Glance refused the delete with ${outcome.status}: ${outcome.reason}`);
      action(outcome.result, outcome.result === 'deleted' ? `queued image past ${report.over.join(', ')}` : 'Glance answered 404 to the delete');
    };
    try {
      await forEachLimited(report.toDelete, this.concurrency, actOn);
    } finally {
      // Even when Glance fails half-way, what was done is audited and applied.
      const recorded = await this.store.recordActions(actions);
      for (const a of recorded) {
        this.log?.info({ ...a, mode: this.mode }, `image ${a.action}`);
        await this.onAction?.(a);
      }
      if (gone.length > 0) {
        await this.store.applyEvents(gone.map((r) => tombstoneOf(r, this.clock())), this.clock(), { dedupe: false });
      }
    }
    return { ...report, actions };
  }

  /** Forget processed message ids older than the retention (dedupe stays exact within it). */
  async forgetOldMessages(retentionMs: number): Promise<number> {
    return this.store.forgetMessagesBefore(this.clock() - retentionMs);
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
