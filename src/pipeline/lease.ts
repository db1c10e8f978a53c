import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { ProjectBusyError } from '../errors.js';
import type { Logger } from '../log.js';
import type { LedgerStore } from '../store/port.js';

/** LEASE_SECONDS and ENFORCE_INTERVAL_SECONDS, and who this process is among the replicas. */
export interface LeaseSettings {
  ttlMs: number;
  intervalMs: number;
  /** Names this process in a holder token (host and pid): which replica holds a project, in redis-cli or SQL. */
  replicaId: string;
}

/**
 * One decision's lease on a project in the shared store (`project:<id>`), held by a token unique
 * to the call, so that neither another replica nor another call of this process decides the
 * project meanwhile. Renewed every third of its ttl while the decision runs; once a renewal is
 * refused or fails, `assertHeld` throws, and the act stops before its next DELETE. At the end it
 * is kept until `start + intervalMs` rather than released: that is what bounds the listings of a
 * project to one per interval, across replicas.
 */
export class DecisionLease {
  private lost = false;
  private renewal: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;

  private constructor(
    private readonly store: LedgerStore,
    private readonly name: string,
    private readonly holder: string,
    private readonly projectId: string,
    private readonly settings: LeaseSettings,
    private readonly clock: () => number,
    private readonly startedAtMs: number,
    log: Logger | undefined,
  ) {
    this.timer = setInterval(() => {
      if (this.lost) return;
      this.renewal = this.renewal
        .then(() => store.acquireLease(name, holder, settings.ttlMs, clock()))
        .then(
          (held) => {
            if (!held) this.lose(log, 'taken by another holder');
          },
          (err: unknown) => this.lose(log, (err as Error).message),
        );
    }, settings.ttlMs / 3);
    this.timer.unref();
  }

  /**
   * The lease on `projectId`, or ProjectBusyError when another call has it (deciding, or keeping
   * the project's interval): then nothing is to be listed or deleted.
   */
  static async take(store: LedgerStore, projectId: string, settings: LeaseSettings, clock: () => number, log?: Logger): Promise<DecisionLease> {
    const name = `project:${projectId}`;
    const holder = `${settings.replicaId}:${randomUUID()}`;
    const now = clock();
    // The holder's lease ends at most one ttl from now, and a kept interval at most one interval
    // after its listing: either way, one of the two from now is when to look again.
    if (!(await store.acquireLease(name, holder, settings.ttlMs, now)))
      throw new ProjectBusyError(projectId, Math.max(1_000, Math.min(settings.intervalMs, settings.ttlMs)));
    return new DecisionLease(store, name, holder, projectId, settings, clock, now, log);
  }

  private lose(log: Logger | undefined, why: string): void {
    if (this.lost) return;
    this.lost = true;
    log?.warn({ projectId: this.projectId, lease: this.name, why }, 'lease on the project lost mid-decision: no further DELETE');
  }

  /** Throws ProjectBusyError once the lease is lost: called before each DELETE (and unprotect). */
  assertHeld(): void {
    if (this.lost)
      throw new ProjectBusyError(this.projectId, this.settings.ttlMs, `project ${this.projectId}: lease lost mid-decision, stopped before the next DELETE`);
  }

  /**
   * Stops the renewals; with `keepInterval`, keeps the lease until the interval since the decision
   * started is over (released at once when it already is, or when ENFORCE_INTERVAL_SECONDS is 0),
   * else releases it. A lease lost midway is another holder's: left alone.
   */
  async end(options: { keepInterval: boolean }): Promise<void> {
    clearInterval(this.timer);
    // A renewal in flight would otherwise land after the shortening below and hold a whole ttl.
    await this.renewal;
    if (this.lost) return;
    const now = this.clock();
    const left = options.keepInterval ? this.startedAtMs + this.settings.intervalMs - now : 0;
    if (left > 0) await this.store.acquireLease(this.name, this.holder, left, now);
    else await this.store.releaseLease(this.name, this.holder);
  }
}

/** Who holds a lease: this process (host and pid, for an operator reading the store) and the call. */
export function leaseHolder(): string {
  return `${hostname()}:${process.pid}:${randomUUID()}`;
}

/**
 * A lease taken in the ledger's store, so that replicas sharing a store take turns: `renew`
 * extends it (false once another holder has it: the work must stop), `release` ends it. The
 * holder is unique to the lease, so a second lease on the same name in the same process waits
 * its turn like another replica's.
 *
 * @example
 *   const lease = await Lease.take(store, 'reconcile', 300_000, Date.now());
 *   if (!lease) return; // another replica is at it
 *   try { ...; if (!(await lease.renew(Date.now()))) throw ... } finally { await lease.release(); }
 */
export class Lease {
  private constructor(
    private readonly store: Pick<LedgerStore, 'acquireLease' | 'releaseLease'>,
    readonly name: string,
    readonly holder: string,
    private readonly ttlMs: number,
  ) {}

  static async take(store: Pick<LedgerStore, 'acquireLease' | 'releaseLease'>, name: string, ttlMs: number, nowMs: number): Promise<Lease | undefined> {
    const holder = leaseHolder();
    return (await store.acquireLease(name, holder, ttlMs, nowMs)) ? new Lease(store, name, holder, ttlMs) : undefined;
  }

  renew(nowMs: number): Promise<boolean> {
    return this.store.acquireLease(this.name, this.holder, this.ttlMs, nowMs);
  }

  release(): Promise<void> {
    return this.store.releaseLease(this.name, this.holder);
  }
}
