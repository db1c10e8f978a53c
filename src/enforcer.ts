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

  constructor(options: PipelineOptions) {
    this.store = options.store;
    this.limits = options.limits;
    this.exempt = options.exemptProjects ?? new Set();
    this.log = options.log;
    this.clock = options.clock ?? Date.now;
    this.images = options.images;
    this.mode = options.mode ?? 'enforce';
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
    for (const imageId of report.toDelete) {
      const action = (kind: ActionRecord['action'], reason: string): ActionRecord => ({
        atMs: this.clock(),
        projectId,
        imageId,
        action: kind,
        reason,
        over: report.over,
        usage: report.usage,
        limits: report.limits,
      });
      const image = await images.getImage(imageId);
      const verdict = verifyCandidate(image, projectId);
      if (!verdict.removable) {
        actions.push(action('skipped', verdict.reason));
        if (!image) gone.push(known.get(imageId)!);
        continue;
      }
      if (this.mode === 'dry-run') {
        actions.push(action('would-delete', `queued image past ${report.over.join(', ')} (dry-run)`));
        continue;
      }
      const outcome = await images.deleteImage(imageId);
      if (outcome.result === 'refused') {
        actions.push(action('not-deletable', `Glance refused the delete with ${outcome.status}: ${outcome.reason}`));
      } else {
        actions.push(action(outcome.result, outcome.result === 'deleted' ? `queued image past ${report.over.join(', ')}` : 'Glance answered 404 to the delete'));
        gone.push(known.get(imageId)!);
      }
    }
    const recorded = await this.store.recordActions(actions);
    for (const a of recorded) this.log?.info({ ...a, mode: this.mode }, `image ${a.action}`);
    if (gone.length > 0) {
      await this.store.applyEvents(gone.filter(Boolean).map((r) => tombstoneOf(r, this.clock())), this.clock(), { dedupe: false });
    }
    return { ...report, actions };
  }

  /** Forget processed message ids older than the retention (dedupe stays exact within it). */
  async forgetOldMessages(retentionMs: number): Promise<number> {
    return this.store.forgetMessagesBefore(this.clock() - retentionMs);
  }
}
