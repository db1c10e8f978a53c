import type { ImageEvent } from '../notification/parse.js';
import type { ImageRecord } from './record.js';
import { eventFromGlance, tombstoneOf, type OwnedImage } from './glance-image.js';
import { isLive } from './usage.js';

/**
 * How the ledger disagreed with Glance's listing, per image:
 * - `missing`: Glance lists an image the ledger never heard of (a lost `image.create`);
 * - `resurrected`: the ledger holds a tombstone for an image Glance still lists (a forged or
 *   misattributed `image.delete`);
 * - `vanished`: the ledger counts an image Glance does not list (a lost `image.delete`, or a forged
 *   `image.create`);
 * - `changed`: both have it, but owner, status, size, protection or import state differ.
 * A steady stream of them is how an operator sees forgery or loss on the bus.
 */
export const CORRECTION_KINDS = ['missing', 'resurrected', 'vanished', 'changed'] as const;
export type CorrectionKind = (typeof CORRECTION_KINDS)[number];

export interface Correction {
  kind: CorrectionKind;
  imageId: string;
  /** The project the image counts against now (Glance's owner; the ledger's, for a vanished one). */
  projectId: string;
}

/**
 * A notification normally reaches the ledger well within this after Glance's change: a listing
 * that is ahead of the ledger by less is a race (a flood's creates still on the bus), not a
 * loss. Such records are still written, but not counted as corrections.
 */
export const IN_FLIGHT_MS = 30_000;

export interface ListingView {
  /** When the listing began (ms): an image made or changed after it may be absent from it for good reason. */
  listedAtMs: number;
  nowMs: number;
  /** How far a ledger time may lie ahead of now and still be believed (CLOCK_SKEW_SECONDS). */
  skewMs: number;
  /**
   * Image ids the same (whole-cloud) listing showed under another owner: that owner's repair
   * moves them, so they are not tombstoned here.
   */
  listedElsewhere?: ReadonlySet<string>;
}

export interface Repair {
  /** Events to apply with `overwrite`: Glance's state replaces the ledger's outright. */
  events: ImageEvent[];
  corrections: Correction[];
}

function differs(r: ImageRecord, e: ImageEvent): boolean {
  return (
    r.projectId !== e.projectId ||
    r.status !== e.status ||
    r.size !== e.size ||
    r.protected !== e.protected ||
    r.importing !== e.importing ||
    r.createdAt !== e.createdAt ||
    r.deleted !== e.deleted
  );
}

/**
 * What the ledger must become so that it says what these listed images say (a project's listing,
 * or one page of the whole cloud's, of any owners). Glance is the truth: its state is written
 * over the record, whatever version or tombstone the bus left there. The only records spared are
 * those the bus changed after the listing began (within the clock-skew allowance): that news is
 * newer than the listing, and the next listing judges it. A record from further in the future
 * than that is not news but forgery. `ledger` holds the records of the listed ids (others are
 * ignored).
 */
export function repairListed(ledger: readonly ImageRecord[], listing: readonly OwnedImage[], view: Omit<ListingView, 'listedElsewhere'>): Repair {
  const byId = new Map(ledger.map((r) => [r.imageId, r]));
  const events: ImageEvent[] = [];
  const corrections: Correction[] = [];
  for (const image of listing) {
    const event = eventFromGlance(image);
    const record = byId.get(image.id);
    let kind: CorrectionKind | undefined;
    if (!record) kind = 'missing';
    else if (changedSinceListing(record, view)) continue;
    else if (record.deleted) kind = 'resurrected';
    else if (differs(record, event)) kind = 'changed';
    if (!kind) continue;
    events.push(event);
    const inFlight = (kind === 'missing' || kind === 'changed') && event.updatedAt * 1000 >= view.listedAtMs - IN_FLIGHT_MS;
    if (!inFlight) corrections.push({ kind, imageId: image.id, projectId: image.owner });
  }
  return { events, corrections };
}

/**
 * The bus changed this record after the listing began (within the clock-skew allowance): that news
 * is newer than the listing, which must not overwrite it; the next listing judges it. A record
 * from further in the future than the skew allows is not news but forgery, and loses.
 */
export function changedSinceListing(record: ImageRecord, view: Omit<ListingView, 'listedElsewhere'>): boolean {
  const listedAtSeconds = Math.floor(view.listedAtMs / 1000) - 1;
  return record.updatedAt >= listedAtSeconds && record.updatedAt * 1000 <= view.nowMs + view.skewMs;
}

/**
 * The tombstones for live records a listing did not show (`vanished`), but for those made after
 * the listing began: their absence proves nothing (unless their date is forged, further ahead
 * than the clock skew allows). Reconcile's sweep gives it what its pass did not mark.
 */
export function sweepUnlisted(unlisted: readonly ImageRecord[], view: Omit<ListingView, 'listedElsewhere'>): Repair {
  const listedAtSeconds = Math.floor(view.listedAtMs / 1000) - 1;
  const events: ImageEvent[] = [];
  const corrections: Correction[] = [];
  for (const record of unlisted) {
    if (!isLive(record)) continue;
    if (record.createdAt >= listedAtSeconds && record.createdAt * 1000 <= view.nowMs + view.skewMs) continue;
    events.push(tombstoneOf(record, view.nowMs));
    corrections.push({ kind: 'vanished', imageId: record.imageId, projectId: record.projectId });
  }
  return { events, corrections };
}

/**
 * What the ledger must become for one project so that it says what Glance's listing of that
 * project says: `repairListed` for what the listing shows, `sweepUnlisted` for the project's live
 * records it does not (but those `listedElsewhere`, which another owner's repair moves).
 *
 * @example
 *   const { events, corrections } = repairFromListing('p1', await store.images('p1'), listing, { listedAtMs, nowMs, skewMs });
 *   await store.applyEvents(events, nowMs, { overwrite: true });
 */
export function repairFromListing(projectId: string, ledger: readonly ImageRecord[], listing: readonly OwnedImage[], view: ListingView): Repair {
  const owned = listing.filter((image) => image.owner === projectId);
  const listed = repairListed(ledger, owned, view);
  const listedIds = new Set(owned.map((image) => image.id));
  const unlisted = ledger.filter((r) => r.projectId === projectId && !listedIds.has(r.imageId) && !view.listedElsewhere?.has(r.imageId));
  const swept = sweepUnlisted(unlisted, view);
  return { events: [...listed.events, ...swept.events], corrections: [...listed.corrections, ...swept.corrections] };
}

/** Corrections counted by kind, for a log line and the metric. */
export function countCorrections(corrections: readonly Correction[]): Partial<Record<CorrectionKind, number>> {
  const counts: Partial<Record<CorrectionKind, number>> = {};
  for (const c of corrections) counts[c.kind] = (counts[c.kind] ?? 0) + 1;
  return counts;
}
