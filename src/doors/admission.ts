import { ProjectBusyError } from '../errors.js';
import type { Logger } from '../log.js';
import type { SubjectToken } from '../openstack/keystone.js';
import { boundsFor, discounted, glanceOverLimitMessage, judgeAdmission, routeOf, type AdmissionBounds } from '../quota/admission.js';
import type { LimitSource, ProjectLimits } from '../quota/limits.js';
import type { Resource } from '../quota/resources.js';
import type { LedgerStore } from '../store/port.js';

/**
 * The admission door: the request side of the one pipeline. The proxy in front of glance-api asks
 * it before each request; it reads the same ledger and limits as the consumer and answers with
 * the same rule whether a create may happen, before Glance writes a row:
 *
 *   request line -> route (src/quota/admission.ts) -> token -> project (Keystone, cached)
 *     -> limits -> reserve atomically in the store (count + open reservations < limit)
 *     -> when the ledger alone says full: confirm on Glance's listing (repairs the ledger) -> answer
 *
 * It never throws: a failure or a timeout answers ADMISSION_FAIL (open: allow).
 */

export interface AdmissionRequest {
  /** The original request's method (X-Original-Method, else the check's own). */
  method: string;
  /** The original request-target, query included (X-Original-URI, else the check's own). */
  uri: string;
  /** The client's X-Auth-Token. */
  token: string | undefined;
}

export type AdmissionReason =
  | 'not-a-create'
  | 'no-token'
  | 'unknown-token'
  | 'not-project-scoped'
  | 'exempt'
  | 'unlimited'
  | 'under-limit'
  | 'ledger-corrected'
  | 'over-limit'
  | 'dry-run'
  | 'error'
  | 'timeout';

export interface AdmissionAnswer {
  decision: 'allow' | 'deny';
  reason: AdmissionReason;
  projectId?: string;
  /** With a refusal (or a dry run's would-refusal): Glance's own words, and what they are made of. */
  over?: { resource: Resource; limit: number; usage: number; message: string };
}

/** What admission needs of the ledger: the atomic reservation, and the records for the rate rule. */
export type AdmissionLedger = Pick<LedgerStore, 'reserveCreate' | 'images' | 'usage'>;

export interface AdmissionOptions {
  ledger: AdmissionLedger;
  limits: LimitSource;
  /** Keystone's word on a client token (KeystoneClient.validateToken through TokenProjects). */
  tokenOwner: (token: string) => Promise<SubjectToken | undefined>;
  /**
   * Glance's listing of the project written over the ledger (Pipeline.enforceOnGlance), answering
   * Glance's image_count_total: asked when the ledger alone puts the project at its limit, since
   * forged notifications can put it there.
   */
  confirmOnGlance?: (projectId: string) => Promise<number>;
  exemptProjects?: ReadonlySet<string>;
  /** dry-run: a refusal is counted and logged, and the create allowed. */
  mode?: 'enforce' | 'dry-run';
  failClosed?: boolean;
  timeoutMs?: number;
  reservationMs?: number;
  confirmMs?: number;
  onAnswer?: (answer: AdmissionAnswer, seconds: number) => void;
  log?: Logger;
  clock?: () => number;
}

/** What Glance's listing said of a project: how many images the ledger counts that Glance does not. */
interface Confirmation {
  atMs: number;
  phantom: number;
}

/** Projects whose confirmation on Glance is remembered at most. */
const CONFIRMED_MAX = 10_000;

/**
 * @example
 *   const gate = new AdmissionGate({ ledger: store, limits, tokenOwner: (t) => tokens.lookup(t) });
 *   const answer = await gate.decide({ method: 'POST', uri: '/v2/images', token });
 *   // { decision: 'deny', reason: 'over-limit', over: { message: 'Project ... is over a limit for [...]' } }
 */
export class AdmissionGate {
  private readonly confirmed = new Map<string, Confirmation>();
  private readonly confirming = new Map<string, Promise<Confirmation>>();
  private readonly clock: () => number;
  private readonly timeoutMs: number;
  private readonly reservationMs: number;
  private readonly confirmMs: number;

  constructor(private readonly o: AdmissionOptions) {
    this.clock = o.clock ?? Date.now;
    this.timeoutMs = o.timeoutMs ?? 2_000;
    this.reservationMs = o.reservationMs ?? 30_000;
    this.confirmMs = o.confirmMs ?? 5_000;
  }

  /** The answer for one proxied request; never rejects. */
  async decide(request: AdmissionRequest): Promise<AdmissionAnswer> {
    const started = performance.now();
    const answer = await this.answer(request);
    this.o.onAnswer?.(answer, (performance.now() - started) / 1000);
    if (answer.decision === 'deny' || answer.reason === 'dry-run') {
      this.o.log?.info(
        { projectId: answer.projectId, reason: answer.reason, over: answer.over },
        answer.decision === 'deny' ? 'admission: create refused' : 'admission: create would be refused (dry-run)',
      );
    }
    return answer;
  }

  private async answer(request: AdmissionRequest): Promise<AdmissionAnswer> {
    // Most requests through the proxy are not creates: they cost no I/O and no timer.
    if (!routeOf(request.method, request.uri)) return { decision: 'allow', reason: 'not-a-create' };
    // Glance answers 401 itself.
    if (!request.token) return { decision: 'allow', reason: 'no-token' };
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), this.timeoutMs)));
    const work = this.decideCreate(request.token);
    try {
      const outcome = await Promise.race([work, timeout]);
      if (outcome !== 'timeout') return outcome;
      // The work goes on and fills the caches for the next request; its late failure is not news.
      work.catch(() => {});
      this.o.log?.warn({ timeoutMs: this.timeoutMs }, 'admission: no decision in time (ADMISSION_TIMEOUT_SECONDS)');
      return this.failed('timeout');
    } catch (err) {
      this.o.log?.warn({ err: (err as Error).message }, 'admission: cannot decide');
      return this.failed('error');
    } finally {
      clearTimeout(timer);
    }
  }

  private failed(reason: 'error' | 'timeout'): AdmissionAnswer {
    return { decision: this.o.failClosed ? 'deny' : 'allow', reason };
  }

  private async decideCreate(token: string): Promise<AdmissionAnswer> {
    const owner = await this.o.tokenOwner(token);
    if (!owner) return { decision: 'allow', reason: 'unknown-token' };
    const projectId = owner.projectId;
    if (!projectId) return { decision: 'allow', reason: 'not-project-scoped' };
    if (this.o.exemptProjects?.has(projectId)) return { decision: 'allow', reason: 'exempt', projectId };
    const limits = await this.o.limits.limitsFor(projectId);
    let bounds = await this.boundsOf(projectId, limits);
    if (bounds.countLimit === undefined && !bounds.rate) return { decision: 'allow', reason: 'unlimited', projectId };
    let seen = await this.reserve(projectId, bounds);
    if (seen.admitted) return { decision: 'allow', reason: 'under-limit', projectId };
    let verdict = judgeAdmission(seen.count, seen.reserved, bounds);
    // The ledger's count (or recent creates) is part of why, and it may hold forged creates:
    // Glance's count decides (confirmed at most once per ADMISSION_CONFIRM_SECONDS per project).
    // The endpoint's own reservations need no confirmation.
    if (!verdict.admit && !verdict.byReservations && this.o.confirmOnGlance) {
      const { phantom } = this.confirmation(projectId) ?? (await this.confirm(projectId));
      // The confirmation re-read the project's limits at the source (a limit raised a moment ago
      // counts), as the cleanup does before it acts.
      bounds = await this.boundsOf(projectId, await this.o.limits.limitsFor(projectId));
      const glanceBounds = discounted(bounds, phantom);
      seen = await this.reserve(projectId, glanceBounds);
      if (seen.admitted) return { decision: 'allow', reason: 'ledger-corrected', projectId };
      // The store's check with the limit raised by `phantom` is this one on Glance's count.
      verdict = judgeAdmission(seen.count - phantom, seen.reserved, {
        ...glanceBounds,
        ...(bounds.countLimit !== undefined ? { countLimit: bounds.countLimit } : {}),
      });
    }
    if (verdict.admit) {
      // The store refused, the rule (on what the store saw) admits: a store bug, not a quota.
      throw new Error(`the store refused a create that its own count admits (count ${seen.count}, reserved ${seen.reserved})`);
    }
    const over = {
      resource: verdict.resource,
      limit: verdict.limit,
      usage: verdict.usage,
      message: glanceOverLimitMessage(projectId, verdict.resource, verdict.limit, verdict.usage),
    };
    if (this.o.mode === 'dry-run') return { decision: 'allow', reason: 'dry-run', projectId, over };
    return { decision: 'deny', reason: 'over-limit', projectId, over };
  }

  private reserve(projectId: string, bounds: AdmissionBounds) {
    const now = this.clock();
    return this.o.ledger.reserveCreate(projectId, bounds, now, now + this.reservationMs);
  }

  /** The rate rule counts the project's creates in its window, deleted images included (as `overRate`). */
  private async boundsOf(projectId: string, limits: ProjectLimits): Promise<AdmissionBounds> {
    const rate = limits.image_create_rate;
    if (!rate) return boundsFor(limits, 0);
    const since = this.clock() / 1000 - rate.windowSeconds;
    const recent = (await this.o.ledger.images(projectId)).filter((r) => r.createdAt > since).length;
    return boundsFor(limits, recent);
  }

  /** The last confirmation on Glance, while it is fresh (ADMISSION_CONFIRM_SECONDS). */
  private confirmation(projectId: string): Confirmation | undefined {
    const c = this.confirmed.get(projectId);
    return c && this.clock() - c.atMs < this.confirmMs ? c : undefined;
  }

  /**
   * Glance's count of the project, against the ledger's once Glance's listing has repaired it:
   * the ledger's excess (`phantom`) is what forged creates left there that the repair spared (a
   * record dated within the clock skew of the listing is left for the next one), or deletes still
   * on the bus. One listing per project at a time: a burst of refusals waits for the same one.
   */
  private async confirm(projectId: string): Promise<Confirmation> {
    let pending = this.confirming.get(projectId);
    if (!pending) {
      pending = (async () => {
        let glanceCount: number | undefined;
        try {
          glanceCount = await this.o.confirmOnGlance!(projectId);
        } catch (err) {
          // Another decision holds the project, or made one within ENFORCE_INTERVAL_SECONDS: it
          // wrote Glance's listing over the ledger, so the ledger's count is Glance's of a moment ago.
          if (!(err instanceof ProjectBusyError)) throw err;
        }
        const ledgerCount = (await this.o.ledger.usage(projectId)).image_count_total;
        glanceCount ??= ledgerCount;
        const confirmation = { atMs: this.clock(), phantom: Math.max(0, ledgerCount - glanceCount) };
        this.confirmed.delete(projectId);
        this.confirmed.set(projectId, confirmation);
        if (this.confirmed.size > CONFIRMED_MAX) this.confirmed.delete(this.confirmed.keys().next().value as string);
        return confirmation;
      })().finally(() => this.confirming.delete(projectId));
      this.confirming.set(projectId, pending);
    }
    return pending;
  }
}
