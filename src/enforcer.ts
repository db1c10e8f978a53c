import type { Logger } from './log.js';
import type { ImageEvent } from './notification/parse.js';
import { parseNotification } from './notification/parse.js';
import { decide, needsRecords } from './quota/decide.js';
import type { ProjectLimits } from './quota/limits.js';
import type { Resource, Usage } from './quota/resources.js';
import type { LimitSource } from './quota/static-limits.js';
import type { LedgerStore } from './store/port.js';

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

export interface PipelineOptions {
  store: LedgerStore;
  limits: LimitSource;
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

  constructor(options: PipelineOptions) {
    this.store = options.store;
    this.limits = options.limits;
    this.exempt = options.exemptProjects ?? new Set();
    this.log = options.log;
    this.clock = options.clock ?? Date.now;
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
    if (over.length > 0) this.log?.info({ projectId, usage, limits, over, toDelete: toDelete.length, exempt }, 'project over quota');
    return { projectId, usage, limits, over, toDelete, exempt };
  }

  /** Forget processed message ids older than the retention (dedupe stays exact within it). */
  async forgetOldMessages(retentionMs: number): Promise<number> {
    return this.store.forgetMessagesBefore(this.clock() - retentionMs);
  }
}
