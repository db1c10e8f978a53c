import type { EnforcementReport, Pipeline } from './index.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { backoffMs, settlesWithin } from '../retry.js';

/**
 * Projects whose ledger changed wait here for a decision, one at a time, each at most once in the
 * queue however many messages touched it. Enforcement runs beside counting: a slow Glance delays
 * deletions, never the ledger. A project whose enforcement failed (Glance or Keystone down) comes
 * back after a backoff; one left undone at a crash is found again by the reconcile at start.
 */
export class EnforcementWorker {
  private readonly pending = new Set<string>();
  private readonly failures = new Map<string, number>();
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly pipeline: Pipeline,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly onReport?: (report: EnforcementReport) => void | Promise<void>,
  ) {}

  add(projects: Iterable<string>): void {
    for (const p of projects) this.pending.add(p);
    this.metrics.pendingProjects.set(this.pending.size);
    if (!this.running && !this.stopped) this.running = this.loop().finally(() => (this.running = undefined));
  }

  private async loop(): Promise<void> {
    while (this.pending.size > 0 && !this.stopped) {
      const projectId = this.pending.values().next().value as string;
      this.pending.delete(projectId);
      this.metrics.pendingProjects.set(this.pending.size);
      try {
        const report = await this.pipeline.enforce(projectId);
        this.failures.delete(projectId);
        await this.onReport?.(report);
      } catch (err) {
        this.metrics.countOpenStackError(err);
        const attempt = (this.failures.get(projectId) ?? 0) + 1;
        this.failures.set(projectId, attempt);
        const delay = backoffMs(attempt, 1_000, 60_000);
        this.log.warn({ projectId, attempt, retryInMs: delay, err: (err as Error).message }, 'enforcement failed; will retry');
        setTimeout(() => this.add([projectId]), delay).unref();
      }
    }
  }

  /**
   * Take no more projects and abandon the backlog (the next start's reconcile finds it again);
   * wait at most `graceMs` for the project in hand. Resolves whether it finished or not.
   */
  async stop(graceMs = Number.POSITIVE_INFINITY): Promise<void> {
    this.stopped = true;
    if (this.pending.size > 0) this.log.info({ projects: this.pending.size }, 'enforcement backlog abandoned; the reconcile at start finds it again');
    this.pending.clear();
    this.metrics.pendingProjects.set(0);
    if (Number.isFinite(graceMs)) {
      if (!(await settlesWithin(this.running, graceMs))) this.log.warn({ graceMs }, 'enforcement in hand abandoned at shutdown');
    } else {
      await this.running;
    }
  }

  get idle(): boolean {
    return !this.running && this.pending.size === 0;
  }
}
