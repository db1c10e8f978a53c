import { applyEventsTo, type ApplyResult, type LedgerTransaction } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import { ZERO_TOTALS, addTotals, isLive, usageFromTotals, type UsageTotals } from '../ledger/usage.js';
import type { ImageEvent } from '../notification/parse.js';
import { isRemovable, newestFirst } from '../quota/decide.js';
import type { Usage } from '../quota/resources.js';
import { judgeAdmission, type AdmissionBounds } from '../quota/admission.js';
import type { ActionRecord, ApplyOptions, CreateReservation, LedgerStore } from './port.js';
import { assertStorable, totalsOverflow } from './storable.js';

function idsOf(index: Map<string, Set<string>>, projectId: string): Set<string> {
  let ids = index.get(projectId);
  if (!ids) {
    ids = new Set();
    index.set(projectId, ids);
  }
  return ids;
}

const isZero = (t: UsageTotals) => t.count === 0 && t.uploading === 0 && t.sizeBytes === 0 && t.stageBytes === 0;

/**
 * The ledger in process memory: for replay, tests and benchmarks. Lost at exit.
 *
 * @example
 *   const store = new MemoryStore();
 *   await store.applyEvents(events, Date.now());
 */
export class MemoryStore implements LedgerStore {
  readonly description = 'memory://';
  private readonly records = new Map<string, ImageRecord>();
  private readonly byProject = new Map<string, Set<string>>();
  /**
   * Per project, the ids of its removable (live queued) images: the count rule reads only these,
   * and a busy project holds thousands of images of which a handful are queued, so filtering and
   * sorting all of them at every evaluation would cost every busy project's decision.
   */
  private readonly removableByProject = new Map<string, Set<string>>();
  private readonly totals = new Map<string, UsageTotals>();
  private readonly seenAt = new Map<string, number>();
  private audit: ActionRecord[] = [];
  private readonly wouldDelete = new Set<string>();
  private readonly state = new Map<string, string>();
  /** Per project, the expiry times of its open reservations (admission). */
  private readonly reservations = new Map<string, number[]>();
  /** Image id -> the reconcile pass that last listed it (markListed). */
  private readonly marks = new Map<string, string>();
  private readonly leases = new Map<string, { holder: string; untilMs: number }>();

  async applyEvents(events: readonly ImageEvent[], nowMs: number, options: ApplyOptions = {}): Promise<ApplyResult> {
    assertStorable(events);
    // A failure half-way must leave nothing behind, as a database transaction would.
    const staged = new Map<string, ImageRecord>();
    const seen = new Map<string, number>();
    const tx: LedgerTransaction = {
      seen: (m) => seen.has(m.messageId) || this.seenAt.has(m.messageId),
      markSeen: (m, at) => void seen.set(m.messageId, at),
      get: (id) => staged.get(id) ?? this.records.get(id),
      put: (r) => void staged.set(r.imageId, r),
    };
    const { deltas, ...result } = applyEventsTo(tx, events, nowMs, !options.overwrite && (options.dedupe ?? true), options.overwrite ?? false);
    const totals = [...deltas].map(([project, delta]) => [project, addTotals(this.totals.get(project) ?? ZERO_TOTALS, delta)] as const);
    for (const [project, t] of totals) {
      for (const v of Object.values(t)) if (!Number.isSafeInteger(v)) throw totalsOverflow(project, v);
    }
    for (const [id, at] of seen) this.seenAt.set(id, at);
    for (const r of staged.values()) {
      const previous = this.records.get(r.imageId);
      if (previous && previous.projectId !== r.projectId) this.byProject.get(previous.projectId)?.delete(r.imageId);
      if (previous) {
        const was = this.removableByProject.get(previous.projectId);
        if (was?.delete(r.imageId) && was.size === 0) this.removableByProject.delete(previous.projectId);
      }
      this.records.set(r.imageId, r);
      idsOf(this.byProject, r.projectId).add(r.imageId);
      if (isRemovable(r)) idsOf(this.removableByProject, r.projectId).add(r.imageId);
    }
    for (const [project, t] of totals) this.totals.set(project, t);
    if (options.listedBy !== undefined) for (const id of staged.keys()) this.marks.set(id, options.listedBy);
    return { ...result, totals: new Map(totals) };
  }

  async usage(projectId: string): Promise<Usage> {
    return usageFromTotals(this.totals.get(projectId) ?? ZERO_TOTALS);
  }

  async usages(projectIds: readonly string[]): Promise<Map<string, Usage>> {
    return new Map(projectIds.map((p) => [p, usageFromTotals(this.totals.get(p) ?? ZERO_TOTALS)]));
  }

  async images(projectId: string): Promise<ImageRecord[]> {
    return [...(this.byProject.get(projectId) ?? [])].map((id) => this.records.get(id)!);
  }

  async removableImages(projectId: string, limit: number): Promise<ImageRecord[]> {
    return [...(this.removableByProject.get(projectId) ?? [])]
      .map((id) => this.records.get(id)!)
      .sort(newestFirst)
      .slice(0, limit);
  }

  async imagesCreatedSince(projectId: string, sinceSeconds: number): Promise<ImageRecord[]> {
    return (await this.images(projectId)).filter((r) => r.createdAt >= sinceSeconds);
  }

  async projects(page?: { after: string; limit: number }): Promise<string[]> {
    const all = [...this.totals]
      .filter(([, t]) => t.count > 0)
      .map(([p]) => p)
      .sort();
    return page ? all.filter((p) => p > page.after).slice(0, page.limit) : all;
  }

  async recordsOf(imageIds: readonly string[]): Promise<ImageRecord[]> {
    return [...new Set(imageIds)].flatMap((id) => this.records.get(id) ?? []);
  }

  async markListed(imageIds: readonly string[], passId: string): Promise<ImageRecord[]> {
    for (const id of imageIds) if (this.records.has(id)) this.marks.set(id, passId);
    return this.recordsOf(imageIds);
  }

  async unmarkedLive(passId: string, cursor: string, limit: number): Promise<{ records: ImageRecord[]; cursor: string }> {
    const page = [...this.records.values()]
      .filter((r) => r.imageId > cursor && isLive(r) && this.marks.get(r.imageId) !== passId)
      .sort((a, b) => (a.imageId < b.imageId ? -1 : 1))
      .slice(0, limit);
    return { records: page, cursor: page.length < limit ? '' : page.at(-1)!.imageId };
  }

  async acquireLease(name: string, holder: string, ttlMs: number, nowMs: number): Promise<boolean> {
    const lease = this.leases.get(name);
    if (lease && lease.holder !== holder && lease.untilMs > nowMs) return false;
    this.leases.set(name, { holder, untilMs: nowMs + ttlMs });
    return true;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    if (this.leases.get(name)?.holder === holder) this.leases.delete(name);
  }

  async leaseUntil(name: string): Promise<number | undefined> {
    return this.leases.get(name)?.untilMs;
  }

  async forgetDeadImagesBefore(beforeMs: number): Promise<number> {
    let n = 0;
    for (const [id, r] of this.records) {
      if (isLive(r) || r.updatedAt * 1000 >= beforeMs) continue;
      this.records.delete(id);
      this.marks.delete(id);
      const ids = this.byProject.get(r.projectId);
      ids?.delete(id);
      if (ids?.size === 0) this.byProject.delete(r.projectId);
      n++;
    }
    for (const [project, t] of this.totals) if (isZero(t)) this.totals.delete(project);
    return n;
  }

  async forgetMessagesBefore(beforeMs: number): Promise<number> {
    let n = 0;
    for (const [id, at] of this.seenAt) if (at < beforeMs && this.seenAt.delete(id)) n++;
    return n;
  }

  async recordActions(actions: readonly ActionRecord[]): Promise<ActionRecord[]> {
    const kept = actions.filter((a) => a.action !== 'would-delete' || !this.wouldDelete.has(a.imageId));
    for (const a of kept) if (a.action === 'would-delete') this.wouldDelete.add(a.imageId);
    this.audit.push(...kept.map((a) => structuredClone(a)));
    return kept;
  }

  async actions(query: { projectId?: string; sinceMs?: number } = {}): Promise<ActionRecord[]> {
    return this.audit.filter((a) => (query.projectId === undefined || a.projectId === query.projectId) && a.atMs >= (query.sinceMs ?? -Infinity));
  }

  async forgetActionsBefore(beforeMs: number): Promise<number> {
    const before = this.audit.length;
    for (const a of this.audit) if (a.atMs < beforeMs && a.action === 'would-delete') this.wouldDelete.delete(a.imageId);
    this.audit = this.audit.filter((a) => a.atMs >= beforeMs);
    return before - this.audit.length;
  }

  async getState(key: string): Promise<string | undefined> {
    return this.state.get(key);
  }

  async setState(key: string, value: string): Promise<void> {
    this.state.set(key, value);
  }

  async reserveCreate(projectId: string, bounds: AdmissionBounds, nowMs: number, expiresAtMs: number): Promise<CreateReservation> {
    const open = (this.reservations.get(projectId) ?? []).filter((at) => at > nowMs);
    const count = this.totals.get(projectId)?.count ?? 0;
    const admitted = judgeAdmission(count, open.length, bounds).admit;
    if (admitted) open.push(expiresAtMs);
    if (open.length > 0) this.reservations.set(projectId, open);
    else this.reservations.delete(projectId);
    return { admitted, count, reserved: admitted ? open.length - 1 : open.length };
  }

  async releaseReservations(creates: ReadonlyMap<string, number>, nowMs: number): Promise<number> {
    let ended = 0;
    for (const [projectId, times] of this.reservations) {
      const open = times.filter((at) => at > nowMs).sort((a, b) => a - b);
      const n = Math.min(open.length, creates.get(projectId) ?? 0);
      ended += n;
      if (open.length > n) this.reservations.set(projectId, open.slice(n));
      else this.reservations.delete(projectId);
    }
    return ended;
  }

  async close(): Promise<void> {}
}
