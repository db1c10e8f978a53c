import type { EnforcementReport, Pipeline } from './index.js';
import { ENV_DEFAULTS } from '../config.js';
import { ProjectBusyError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { backoffMs, settlesWithin } from '../retry.js';

export interface EnforcementWorkerOptions {
  /** Projects decided at once (ENFORCE_PROJECTS). */
  projectsAtOnce?: number;
  /** Consecutive failures after which a project is left to the reconcile (ENFORCE_MAX_ATTEMPTS). */
  maxAttempts?: number;
}

/**
 * Projects whose ledger changed wait here for a decision, each at most once in the queue however
 * many messages touched it, up to ENFORCE_PROJECTS decided at once (never one project twice at
 * once). Enforcement runs beside counting: a slow Glance delays deletions, never the ledger.
 *
 * A project that waits out a timer (busy: decided elsewhere or within its interval; or failed, in
 * backoff) is not taken again before the timer, however many messages touch it meanwhile: that,
 * with the lease, is what bounds its listings. Busy is not a failure. After ENFORCE_MAX_ATTEMPTS
 * consecutive failures a project is reported and left to the reconcile; one left undone at a crash
 * is found again by the reconcile at start. No project ever holds up another.
 *
 * @example
 *   const worker = new EnforcementWorker(pipeline, log, metrics, undefined, { projectsAtOnce: 4, maxAttempts: 6 });
 *   worker.add((await pipeline.ingest(bodies)).projects);
 */
export class EnforcementWorker {
  private readonly pending = new Set<string>();
  /** Projects being decided now, by one of the slots. */
  private readonly inHand = new Set<string>();
  /** Projects waiting out a timer (busy or backoff), with it. */
  private readonly waiting = new Map<string, NodeJS.Timeout>();
  private readonly failures = new Map<string, number>();
  private readonly slots = new Set<Promise<void>>();
  private stopped = false;
  private readonly projectsAtOnce: number;
  private readonly maxAttempts: number;

  constructor(
    private readonly pipeline: Pick<Pipeline, 'enforce'>,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly onReport?: (report: EnforcementReport) => void | Promise<void>,
    options: EnforcementWorkerOptions = {},
  ) {
    this.projectsAtOnce = options.projectsAtOnce ?? ENV_DEFAULTS.ENFORCE_PROJECTS;
    this.maxAttempts = options.maxAttempts ?? ENV_DEFAULTS.ENFORCE_MAX_ATTEMPTS;
  }

  add(projects: Iterable<string>): void {
    for (const p of projects) if (!this.waiting.has(p)) this.pending.add(p);
    this.metrics.pendingProjects.set(this.pending.size);
    this.fill();
  }

  /** Starts slots while there is a project no slot holds and a slot free. */
  private fill(): void {
    while (!this.stopped && this.slots.size < this.projectsAtOnce && this.next() !== undefined) {
      const slot: Promise<void> = this.slot().finally(() => {
        this.slots.delete(slot);
        // A project re-added while in hand was skipped by the other slots: look again.
        this.fill();
      });
      this.slots.add(slot);
    }
  }

  /** The first pending project no slot holds. */
  private next(): string | undefined {
    for (const p of this.pending) if (!this.inHand.has(p)) return p;
    return undefined;
  }

  private async slot(): Promise<void> {
    for (let projectId = this.next(); projectId !== undefined && !this.stopped; projectId = this.next()) {
      this.pending.delete(projectId);
      this.inHand.add(projectId);
      this.metrics.pendingProjects.set(this.pending.size);
      try {
        await this.decide(projectId);
      } finally {
        this.inHand.delete(projectId);
      }
    }
  }

  private async decide(projectId: string): Promise<void> {
    try {
      const report = await this.pipeline.enforce(projectId);
      this.failures.delete(projectId);
      await this.onReport?.(report);
    } catch (err) {
      if (err instanceof ProjectBusyError) {
        this.log.debug({ projectId, retryInMs: err.retryAfterMs }, 'project busy (decided elsewhere, or within its interval); deferred');
        this.later(projectId, err.retryAfterMs);
        return;
      }
      this.metrics.countOpenStackError(err);
      const attempt = (this.failures.get(projectId) ?? 0) + 1;
      if (attempt >= this.maxAttempts) {
        this.failures.delete(projectId);
        this.metrics.enforcementAbandoned.inc();
        this.log.error(
          { projectId, attempts: attempt, err: (err as Error).message },
          'enforcement keeps failing; project left to the reconcile (ENFORCE_MAX_ATTEMPTS)',
        );
        return;
      }
      this.failures.set(projectId, attempt);
      const delay = backoffMs(attempt, 1_000, 60_000);
      this.log.warn({ projectId, attempt, retryInMs: delay, err: (err as Error).message }, 'enforcement failed; will retry');
      this.later(projectId, delay);
    }
  }

  private later(projectId: string, delayMs: number): void {
    if (this.stopped) return;
    const timer = setTimeout(() => {
      this.waiting.delete(projectId);
      this.add([projectId]);
    }, delayMs);
    timer.unref();
    this.waiting.set(projectId, timer);
  }

  /**
   * Take no more projects and abandon the backlog, timers included (the next start's reconcile
   * finds it again); wait at most `graceMs` for the projects in hand. Resolves whether they
   * finished or not.
   */
  async stop(graceMs = Number.POSITIVE_INFINITY): Promise<void> {
    this.stopped = true;
    const abandoned = this.pending.size + this.waiting.size;
    if (abandoned > 0) this.log.info({ projects: abandoned }, 'enforcement backlog abandoned; the reconcile at start finds it again');
    this.pending.clear();
    for (const timer of this.waiting.values()) clearTimeout(timer);
    this.waiting.clear();
    this.metrics.pendingProjects.set(0);
    const running = this.slots.size > 0 ? Promise.all(this.slots) : undefined;
    if (Number.isFinite(graceMs)) {
      if (!(await settlesWithin(running, graceMs))) this.log.warn({ graceMs }, 'enforcement in hand abandoned at shutdown');
    } else {
      await running;
    }
  }

  /** Nothing being decided and nothing pending; projects waiting out a timer do not count. */
  get idle(): boolean {
    return this.slots.size === 0 && this.pending.size === 0;
  }

  /** Projects waiting out a timer: busy (deferred) or failed (in backoff). */
  get deferred(): number {
    return this.waiting.size;
  }
}
