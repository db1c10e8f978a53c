import { randomUUID } from 'node:crypto';
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
 * A lease in the ledger's store, so that replicas sharing the store take turns on some work (a
 * project's decision, the reconcile pass). Its holder token is unique to the lease, so a second
 * lease on the same name in this very process waits its turn like another replica's. Renewed every
 * third of its ttl while the work runs; once a renewal is refused or fails, `lost` is set and the
 * work must stop before its next step that counts (a DELETE, a page written).
 *
 * @example
 *   const lease = await Lease.take(store, 'reconcile', replicaId, 30_000, Date.now);
 *   if (!lease) return; // another replica is at it
 *   try { ...; if (lease.lost) throw ... } finally { await lease.end(); }
 */
export class Lease {
  private lostTo: string | undefined;
  private renewal: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;

  private constructor(
    private readonly store: Pick<LedgerStore, 'acquireLease' | 'releaseLease'>,
    readonly name: string,
    private readonly holder: string,
    ttlMs: number,
    private readonly clock: () => number,
    log: Logger | undefined,
  ) {
    const lose = (why: string) => {
      if (this.lostTo !== undefined) return;
      this.lostTo = why;
      log?.warn({ lease: name, why }, 'lease lost mid-work: the work stops before its next step');
    };
    this.timer = setInterval(() => {
      if (this.lostTo !== undefined) return;
      this.renewal = this.renewal
        .then(() => store.acquireLease(name, holder, ttlMs, clock()))
        .then(
          (held) => {
            if (!held) lose('taken by another holder');
          },
          (err: unknown) => lose((err as Error).message),
        );
    }, ttlMs / 3);
    this.timer.unref();
  }

  /** The lease on `name` for `ttlMs`, or undefined while another holder has it. */
  static async take(
    store: Pick<LedgerStore, 'acquireLease' | 'releaseLease'>,
    name: string,
    replicaId: string,
    ttlMs: number,
    clock: () => number,
    log?: Logger,
  ): Promise<Lease | undefined> {
    const holder = `${replicaId}:${randomUUID()}`;
    return (await store.acquireLease(name, holder, ttlMs, clock())) ? new Lease(store, name, holder, ttlMs, clock, log) : undefined;
  }

  /** A renewal was refused (another holder has it) or failed: the work must stop. */
  get lost(): boolean {
    return this.lostTo !== undefined;
  }

  /**
   * Stops the renewals; keeps the lease until `keepUntilMs` when that is still ahead (the interval
   * of a project's decision), else releases it. A lease lost midway is another holder's: left alone.
   */
  async end(keepUntilMs?: number): Promise<void> {
    clearInterval(this.timer);
    // A renewal in flight would otherwise land after the shortening below and hold a whole ttl.
    await this.renewal;
    if (this.lost) return;
    const now = this.clock();
    const left = (keepUntilMs ?? now) - now;
    if (left > 0) await this.store.acquireLease(this.name, this.holder, left, now);
    else await this.store.releaseLease(this.name, this.holder);
  }
}
