import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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
    help: 'Reconcile runs, by result: ok, partial (some projects failed, the rest done), failed',
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

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'gqe_' });
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
