import type { GlanceImage } from '../ledger/glance-image.js';
import type { CorrectionKind } from '../ledger/repair.js';
import type { ProjectLimits } from '../quota/limits.js';
import type { Resource, Usage } from '../quota/resources.js';
import type { ActionRecord } from '../store/port.js';

/*
 * What the pipeline needs of the world outside it, and what it hands back: the adapters
 * (src/openstack/glance.ts, src/transport/notifier.ts) import these, never the pipeline itself.
 * The ledger's port is src/store/port.ts.
 */

/** What a DELETE did; `refused` carries Glance's status (403: protected, 409: in use) and message. */
export type DeleteOutcome = { result: 'deleted' } | { result: 'gone' } | { result: 'refused'; status: number; reason: string };

/** What clearing an image's `protected` flag did; `refused` carries Glance's status and message. */
export type UnprotectOutcome = { result: 'unprotected' } | { result: 'gone' } | { result: 'refused'; status: number; reason: string };

/** What the pipeline needs of Glance's API (src/openstack/glance.ts implements it). */
export interface ImageService {
  /** The image as Glance shows it now, or null when Glance does not know it (404). */
  getImage(id: string): Promise<GlanceImage | null>;
  deleteImage(id: string): Promise<DeleteOutcome>;
  /** `protected` set to false (Glance refuses to DELETE a protected image, even for an admin). */
  unprotectImage(id: string): Promise<UnprotectOutcome>;
  /**
   * Every image but deleted ones, of one owner or of everyone, all pages. An image it cannot read
   * is left out and reported to `onUnreadable`, never fails the listing.
   */
  listImages(query?: { owner?: string; onUnreadable?: (imageId: string, reason: string) => void }): AsyncIterable<GlanceImage>;
  /**
   * Every image of every project, page by page, from `from` (the first page when absent): the
   * whole-cloud listing of a reconcile pass, which may span many runs. Each page says where the
   * listing goes on after it (`next`, null after the last page), so that a run can stop between
   * two pages and the next run resume there. Nothing is remembered across pages: an image whose
   * `os_hidden` flipped between the two passes may come twice (writing it twice is harmless).
   */
  listPages(query?: { from?: ListPosition; onUnreadable?: (imageId: string, reason: string) => void }): AsyncIterable<ListedPage>;
}

/**
 * Where a whole-cloud listing stands: Glance lists hidden images only when asked (`os_hidden`),
 * so a listing is two passes, each paged by Glance's own marker (the last id of a page).
 */
export interface ListPosition {
  hidden: boolean;
  marker?: string | undefined;
}

export interface ListedPage {
  images: GlanceImage[];
  /** Where the listing goes on after this page; null when this was the last page. */
  next: ListPosition | null;
}

export type EnforcementMode = 'enforce' | 'dry-run';

export interface ProjectReport {
  projectId: string;
  usage: Usage;
  limits: ProjectLimits;
  over: Resource[];
  toDelete: string[];
  exempt: boolean;
  /** `ledger`: the bus's estimate; `glance`: Glance's own listing, the only basis for an act. */
  basis: 'ledger' | 'glance';
  /** With basis `glance`: how the listing corrected the ledger, by kind (src/ledger/repair.ts). */
  corrected?: Partial<Record<CorrectionKind, number>>;
}

export interface EnforcementReport extends ProjectReport {
  actions: ActionRecord[];
}

/** A project whose decision or act failed (Keystone, Glance or the store): the others went on. */
export interface ProjectFailure {
  projectId: string;
  error: Error;
}
