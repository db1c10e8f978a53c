import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { ENV_DEFAULTS } from './config.js';
import { NearestProjects, type ProjectFill } from './quota/nearest.js';
import { isUnlimited } from './quota/decide.js';
import { Resource, USAGE_RESOURCES } from './quota/resources.js';

/**
 * What an operator graphs and alerts on. One registry per process (not prom-client's global one),
 * so tests can build several consumers side by side.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly messages = new Counter({
    name: 'gqe_messages_total',
    help: 'Notifications processed, by result: applied, duplicate, ignored, invalid',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly actions = new Counter({
    name: 'gqe_actions_total',
    help: 'Enforcement actions, by kind: deleted, would-delete, skipped, protected, not-deletable, gone',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });
  readonly lag = new Histogram({
    name: 'gqe_notification_lag_seconds',
    help: "From the notification's oslo timestamp to its ledger commit",
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });
  readonly reconcileRuns = new Counter({
    name: 'gqe_reconcile_runs_total',
    help: 'Reconcile runs, by result: ok, partial (some projects failed, or the run stopped within its budget), busy (another replica held the pass), failed',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly reconcileDuration = new Histogram({
    name: 'gqe_reconcile_duration_seconds',
    help: 'Duration of a full reconcile',
    buckets: [0.1, 0.5, 1, 5, 10, 30, 60, 300, 900],
    registers: [this.registry],
  });
  readonly ledgerCorrections = new Counter({
    name: 'gqe_ledger_corrections_total',
    help: "Ledger records overwritten with Glance's listing, by kind: missing, resurrected, vanished, changed. A steady stream means notifications are lost or forged",
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly openstackErrors = new Counter({
    name: 'gqe_openstack_errors_total',
    help: 'Failed Keystone or Glance calls after their retries, by service',
    labelNames: ['service'] as const,
    registers: [this.registry],
  });
  readonly storeErrors = new Counter({
    name: 'gqe_store_errors_total',
    help: 'Failed ledger writes (retried with backoff; nothing is acked meanwhile)',
    registers: [this.registry],
  });
  readonly brokerConnected = new Gauge({
    name: 'gqe_broker_connected',
    help: '1 while connected to RabbitMQ',
    registers: [this.registry],
  });
  readonly enforcementAbandoned = new Counter({
    name: 'gqe_enforcement_abandoned_total',
    help: 'Projects whose enforcement failed ENFORCE_MAX_ATTEMPTS times in a row, left to the reconcile',
    registers: [this.registry],
  });
  readonly pendingProjects = new Gauge({
    name: 'gqe_enforcement_pending_projects',
    help: 'Projects whose ledger changed and that wait for a decision',
    registers: [this.registry],
  });

  readonly admissionDecisions = new Counter({
    name: 'gqe_admission_decisions_total',
    help: 'Answers of the admission endpoint, by decision (allow, deny) and reason (not-a-create, no-token, unknown-token, not-project-scoped, exempt, unlimited, under-limit, ledger-corrected, over-limit, dry-run, error, timeout)',
    labelNames: ['decision', 'reason'] as const,
    registers: [this.registry],
  });
  readonly admissionSeconds = new Histogram({
    name: 'gqe_admission_seconds',
    help: 'Time the admission endpoint took to decide, by decision',
    labelNames: ['decision'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });

  private limitsStatus: () => boolean = () => true;
  readonly limitsTrusted: Gauge = new Gauge({
    name: 'gqe_limits_trusted',
    help: '1 while the configured limits source answers (Keystone read, or static limits configured); 0 while it fails: projects over are reported, nothing is deleted',
    registers: [this.registry],
    collect: (): void => this.limitsTrusted.set(this.limitsStatus() ? 1 : 0),
  });

  readonly projectUsage = new Gauge({
    name: 'gqe_project_usage',
    help: "Usage of the METRICS_PROJECTS projects nearest or over their limits, by project id and resource, in Glance's units (images; MiB for sizes), as last decided",
    labelNames: ['project', 'resource'] as const,
    registers: [this.registry],
  });
  readonly projectLimit = new Gauge({
    name: 'gqe_project_limit',
    help: 'Limits of the same projects, by project id and resource; no series where the resource is unlimited',
    labelNames: ['project', 'resource'] as const,
    registers: [this.registry],
  });
  readonly projectsOver = new Gauge({
    name: 'gqe_projects_over_limit',
    help: 'Projects over each limit, every project counted (not only those with gauges of their own), as last decided',
    labelNames: ['resource'] as const,
    registers: [this.registry],
  });
  /** The projects with gauges of their own: never more than METRICS_PROJECTS, whatever the cloud holds. */
  private readonly nearest: NearestProjects;
  /** Which limits each project over a limit is over: bounded by the projects over now. */
  private readonly over = new Map<string, readonly string[]>();
  private readonly overCounts = new Map<string, number>();

  constructor(options: { projects?: number } = {}) {
    collectDefaultMetrics({ register: this.registry, prefix: 'gqe_' });
    this.nearest = new NearestProjects(options.projects ?? ENV_DEFAULTS.METRICS_PROJECTS);
    // Zero, not absent, while no project is over: an alert or a panel then reads a number.
    for (const resource of Resource.options) this.projectsOver.set({ resource }, 0);
  }

  /**
   * One decision (the ledger's estimate or Glance's listing): the per-project gauges follow it.
   *
   * @example
   *   openRuntime(env, { onDecision: (report) => metrics.observeDecision(report) });
   */
  observeDecision(p: ProjectFill): void {
    this.forget(this.nearest.observe(p));
    if (this.nearest.has(p.projectId)) this.export(p);
    this.setOver(p.projectId, p.over);
  }

  /**
   * A whole reconcile pass: the N nearest of its projects replace the gauges, and the counts of
   * projects over each limit are recounted. Projects the pass could not decide (`failed`) keep
   * what their last decision said.
   */
  observePass(projects: readonly ProjectFill[], failed: ReadonlySet<string> = new Set()): void {
    this.forget(this.nearest.replaceAll(projects, failed));
    for (const p of this.nearest.list()) this.export(p);
    const listed = new Set(projects.map((p) => p.projectId));
    for (const id of [...this.over.keys()]) if (!listed.has(id) && !failed.has(id)) this.setOver(id, []);
    for (const p of projects) this.setOver(p.projectId, p.over);
  }

  private export(p: ProjectFill): void {
    for (const resource of USAGE_RESOURCES) {
      const labels = { project: p.projectId, resource };
      this.projectUsage.set(labels, p.usage[resource]);
      const limit = p.limits[resource];
      if (isUnlimited(limit)) this.projectLimit.remove(labels);
      else this.projectLimit.set(labels, limit);
    }
  }

  /** Projects that left the N: their series leave the registry, so a scrape never keeps them. */
  private forget(projectIds: readonly string[]): void {
    for (const project of projectIds) {
      for (const resource of USAGE_RESOURCES) {
        this.projectUsage.remove({ project, resource });
        this.projectLimit.remove({ project, resource });
      }
    }
  }

  private setOver(projectId: string, over: readonly string[]): void {
    const before = this.over.get(projectId) ?? [];
    if (before.length === 0 && over.length === 0) return;
    for (const r of before) this.overCounts.set(r, (this.overCounts.get(r) ?? 1) - 1);
    for (const r of over) this.overCounts.set(r, (this.overCounts.get(r) ?? 0) + 1);
    if (over.length > 0) this.over.set(projectId, [...over]);
    else this.over.delete(projectId);
    for (const r of new Set([...before, ...over])) this.projectsOver.set({ resource: r }, this.overCounts.get(r) ?? 0);
  }

  /** gqe_limits_trusted follows the source's own status at every scrape. */
  watchLimits(source: { status?(): { trusted: boolean } }): void {
    this.limitsStatus = () => source.status?.().trusted !== false;
  }

  countCorrections(corrections: readonly { kind: string }[]): void {
    for (const c of corrections) this.ledgerCorrections.inc({ kind: c.kind });
  }

  /** One answer of the admission endpoint (src/doors/admission.ts `onAnswer`). */
  countAdmission(answer: { decision: string; reason: string }, seconds: number): void {
    this.admissionDecisions.inc({ decision: answer.decision, reason: answer.reason });
    this.admissionSeconds.observe({ decision: answer.decision }, seconds);
  }

  /** Which service an error came from, for the openstack error counter. */
  countOpenStackError(err: unknown): void {
    const service = (err as { service?: string }).service;
    this.openstackErrors.inc({ service: service === 'keystone' || service === 'glance' ? service : 'unknown' });
  }
}
