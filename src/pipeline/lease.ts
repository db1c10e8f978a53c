import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { LedgerStore } from '../store/port.js';

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
