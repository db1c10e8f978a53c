import type { ApplyResult } from '../ledger/apply.js';
import type { ImageRecord } from '../ledger/record.js';
import type { ImageEvent } from '../notification/parse.js';
import type { AdmissionBounds } from '../quota/admission.js';
import type { ProjectLimits } from '../quota/limits.js';
import type { Resource, Usage } from '../quota/resources.js';

/**
 * What the enforcer did about one candidate image, and why. `would-delete` is dry-run's
 * `deleted`; `skipped` means Glance, read right before the act, did not confirm the image as
 * removable; `protected` is a queued image past the limit left in place because its owner
 * protected it and PROTECTED_QUEUED_IMAGES=report; `not-deletable` is a 403 or 409 from Glance's
 * PATCH or DELETE; `gone` means Glance no longer had it.
 */
export type ActionKind = 'deleted' | 'would-delete' | 'skipped' | 'protected' | 'not-deletable' | 'gone';

export interface ActionRecord {
  atMs: number;
  projectId: string;
  imageId: string;
  action: ActionKind;
  reason: string;
  /** The resources the project was over when the image became a candidate. */
  over: Resource[];
  usage: Usage;
  limits: ProjectLimits;
}

export interface ApplyOptions {
  /**
   * false for events the enforcer makes itself from Glance's API (reconcile, a confirmed delete):
   * they have no message id worth remembering, and merging is idempotent anyway.
   */
  dedupe?: boolean;
  /**
   * true for Glance's own state (a listing, a confirmed delete): each event replaces its image's
   * record outright instead of merging by version, so neither a forged future timestamp nor a
   * forged sticky tombstone can outlive the next look at Glance. Implies no dedupe.
   */
  overwrite?: boolean;
  /**
   * A reconcile pass's id: each record the batch writes is marked as listed by that pass
   * (`markListed`) in the same write, instead of a second write after it.
   */
  listedBy?: string;
}

/**
 * A reconcile pass's listing written in bulk, for a store that writes in key order far faster
 * than at random (SQLite: a first pass over scattered uuid4 ids was 3-4x the bare listing, every
 * image a random insert into three B-trees; bench/README.md). The pass's images are appended to a
 * staging area no read sees, then sorted into the ledger at once when the listing ends. Only for a
 * ledger no pass has listed yet, which is what makes every staged image `missing`; later passes
 * mark and compare page by page.
 */
export interface BulkListing {
  /**
   * At the start of a pass: drops whatever staging an abandoned pass left, and answers whether
   * this pass stages its listing (the ledger holds few records, none of them listed by a pass).
   */
  begin(): Promise<boolean>;
  /**
   * A page of the listing (Glance's state as `overwrite` events, every image new to the ledger),
   * kept with when the page was listed; nothing the ledger serves changes until `finish`.
   */
  stage(events: readonly ImageEvent[], passId: string, listedAtMs: number): Promise<void>;
  /**
   * The end of the listing: the staged images become the ledger's records, marked as listed by
   * `passId`, in one transaction. A record the bus wrote meanwhile keeps its state where it
   * changed after its page was listed (`changedSinceListing`), else takes the listing's; records
   * the listing did not show stay for the sweep; the totals are recounted from the records.
   * Nothing staged (or finished already), nothing done. Returns how many images were staged.
   */
  finish(passId: string, nowMs: number, skewMs: number): Promise<{ staged: number }>;
}

/** What `reserveCreate` saw and did: the count and the open reservations before this one. */
export interface CreateReservation {
  admitted: boolean;
  count: number;
  reserved: number;
}

/**
 * Where the ledger lives. One contract suite (test/contract) holds every adapter to the same
 * behaviour; an adapter's only freedom is how it makes `applyEvents` atomic.
 */
export interface LedgerStore {
  /** e.g. "sqlite:///var/lib/gqe/ledger.db", secrets left out: safe to log. */
  readonly description: string;

  /**
   * Apply a batch atomically: either every event's effect and its message id are committed, or
   * none is. A message seen before (within the retention) changes nothing and is reported as
   * 'duplicate', also when it repeats inside the batch. A redelivery repeats the body byte for
   * byte; SQLite knows a message by its id and oslo timestamp, the other stores by the id alone.
   */
  applyEvents(events: readonly ImageEvent[], nowMs: number, options?: ApplyOptions): Promise<ApplyResult>;

  /** Usage from the totals kept in step by `applyEvents`: no scan of the project's images. */
  usage(projectId: string): Promise<Usage>;

  /**
   * `usage` of each of these projects, in one read: the reconcile decides a page of projects at a
   * time, and one read a page costs a whole cloud a fraction of one read a project. A project the
   * ledger has no totals for has zero usage.
   */
  usages(projectIds: readonly string[]): Promise<Map<string, Usage>>;

  /** Every record of the project, tombstones included. */
  images(projectId: string): Promise<ImageRecord[]>;

  /**
   * The project's live `queued` images, newest first (created_at descending, then the larger id),
   * at most `limit`: all the count rule needs, read through an index instead of every record.
   */
  removableImages(projectId: string, limit: number): Promise<ImageRecord[]>;

  /**
   * Every record of the project created at or after `sinceSeconds` (Glance's created_at, epoch
   * seconds), tombstones included: the rate rule's window, read through an index so that its cost
   * grows with the window, not with the project's history.
   */
  imagesCreatedSince(projectId: string, sinceSeconds: number): Promise<ImageRecord[]>;

  /**
   * Every project with at least one live image (its `image_count_total` is above 0), sorted. A
   * project whose images are all deleted, killed or tombstoned is neither reconciled nor looked
   * up in Keystone: forged project ids cost nothing once their images are gone. With `page`, at
   * most `page.limit` of them, those sorting after `page.after` ('' for the first page): a whole
   * cloud's projects are walked without holding them all.
   *
   * @example
   *   for (let page = await store.projects({ after: '', limit: 500 }); page.length > 0; page = await store.projects({ after: page.at(-1)!, limit: 500 })) ...
   */
  projects(page?: { after: string; limit: number }): Promise<string[]>;

  /**
   * The records of these images (any project, tombstones included); ids the ledger does not hold
   * are left out, in no particular order. Reconcile compares a page of Glance's listing with them.
   */
  recordsOf(imageIds: readonly string[]): Promise<ImageRecord[]>;

  /**
   * Reconcile's mark: these images were in the listing of pass `passId`. The mark stays on the
   * record whatever `applyEvents` merges into it later (only the next mark replaces it), and an
   * id the ledger does not hold is ignored. Returns the records it marked, as `recordsOf` would
   * (the mark changes no field of them): a page's mark and its read for the comparison are one
   * statement where the store can (SQLite, PostgreSQL).
   */
  markListed(imageIds: readonly string[], passId: string): Promise<ImageRecord[]>;

  /**
   * The sweep at the end of a listing pass: one page of at most `limit` live records (not
   * tombstoned, not killed, deleted or pending_delete; of every project) whose mark is not
   * `passId`, continuing from `cursor` ('' for the first page, else the one the last page gave, in
   * the store's own form). The next cursor is '' when there is no more. Records marked or tombstoned while the sweep walks are skipped or not, either is
   * right; a record live and unmarked for the whole walk is returned exactly once.
   */
  unmarkedLive(passId: string, cursor: string, limit: number): Promise<{ records: ImageRecord[]; cursor: string }>;

  /**
   * A lease on `name` for `holder` until `nowMs + ttlMs`: true when the holder has it now (it was
   * free, expired, or already the holder's: then it is extended), false when another holder's is
   * still running. One store shared by many replicas grants it to one of them at a time.
   *
   * @example
   *   if (await store.acquireLease(`project:${id}`, replicaId, 30_000, Date.now())) try { ... } finally { await store.releaseLease(`project:${id}`, replicaId); }
   */
  acquireLease(name: string, holder: string, ttlMs: number, nowMs: number): Promise<boolean>;

  /** Ends `holder`'s lease on `name`; a lease another holder has taken since is left alone. */
  releaseLease(name: string, holder: string): Promise<void>;

  /**
   * When the lease on `name` ends (epoch ms, by the clock of the holder that took or kept it), or
   * undefined when nobody has it; an expired lease not yet taken over may still be given. For a
   * holder refused a lease, to come back when it ends rather than after a guess.
   */
  leaseUntil(name: string): Promise<number | undefined>;

  /** Where the store has one: a first reconcile pass's listing written in bulk (see BulkListing). */
  readonly bulkListing?: BulkListing;

  /** Drop processed message ids recorded before `beforeMs`; returns how many. */
  forgetMessagesBefore(beforeMs: number): Promise<number>;

  /**
   * Drop the records of dead images (tombstoned, or `killed`, `deleted`, `pending_delete`) whose
   * `updated_at` is before `beforeMs`, and the totals of projects left with nothing to count;
   * returns how many records. Dead records count for nothing, so usage is unchanged. A message
   * for such an image that arrives after this (older than the retention) can bring it back; the
   * next reconcile finds Glance no longer has it and tombstones it again.
   */
  forgetDeadImagesBefore(beforeMs: number): Promise<number>;

  /**
   * Append to the audit trail. A `would-delete` is kept once per image, so a dry run that sees a
   * project over its quota on every message does not repeat itself; returns the records kept.
   */
  recordActions(actions: readonly ActionRecord[]): Promise<ActionRecord[]>;

  /** The audit trail, oldest first. */
  actions(query?: { projectId?: string; sinceMs?: number }): Promise<ActionRecord[]>;

  /** Drop audit records older than `beforeMs`; returns how many. */
  forgetActionsBefore(beforeMs: number): Promise<number>;

  /**
   * A small named value the enforcer keeps for itself beside the ledger, e.g. where the reconcile
   * pass in progress stands (`reconcile.pass`), so that the next run, on any replica, resumes it.
   * `undefined` until first set.
   *
   * @example
   *   await store.setState('reconcile.pass', JSON.stringify(state));
   *   const kept = (await store.getState('reconcile.pass')) ?? '';
   */
  getState(key: string): Promise<string | undefined>;

  /** Sets (or replaces) the value of `key`; see `getState`. */
  setState(key: string, value: string): Promise<void>;

  /**
   * The admission endpoint's one write: in a single atomic step, drop the project's expired
   * reservations, read its count (the totals `applyEvents` keeps) and its open reservations, and
   * if `judgeAdmission` (src/quota/admission.ts) admits one more create against `bounds`, add a
   * reservation that lives until `releaseReservations` ends it or `expiresAtMs` passes. Parallel
   * callers, in one process or on many gates over one shared store, never admit past a limit.
   *
   * @example
   *   const r = await store.reserveCreate(projectId, { countLimit: 5 }, Date.now(), Date.now() + 30_000);
   *   if (!r.admitted) deny(r.count + r.reserved);
   */
  reserveCreate(projectId: string, bounds: AdmissionBounds, nowMs: number, expiresAtMs: number): Promise<CreateReservation>;

  /**
   * Ends, per project, up to that many open reservations, soonest to expire first: a project's
   * image.create came in on the bus, so its count now holds what a reservation held. Also drops
   * every expired reservation. Returns how many open ones ended.
   */
  releaseReservations(creates: ReadonlyMap<string, number>, nowMs: number): Promise<number>;

  close(): Promise<void>;
}
