import type { EnforcementReport, ImageService, Pipeline } from './enforcer.js';
import { eventFromGlance, tombstoneOf, type GlanceImageState } from './ledger/synthetic.js';
import type { ImageEvent } from './notification/parse.js';

export interface ReconcileOptions {
  /** Only this project; otherwise every project that owns images in Glance or in the ledger. */
  projectId?: string;
  /**
   * `act` (default): decide and act on each project at once. `defer`: only rebuild the ledger and
   * report usage; the consumer hands the projects to its enforcement worker instead.
   */
  then?: 'act' | 'defer';
  /** Called after each project, for a progress bar. */
  onProgress?: (done: number, total: number, projectId: string) => void;
}

export interface ReconcileSummary {
  projects: EnforcementReport[];
  /** Images Glance listed. */
  listed: number;
  /** Ledger images Glance no longer has, tombstoned. */
  vanished: number;
  durationMs: number;
}

type OwnedImage = GlanceImageState & { owner: string };

/**
 * The reconcile door: Glance's listing is authoritative, so it is turned into ledger events and
 * fed to the same store and decision as notifications. Catches up on whatever the bus lost (images
 * made before the enforcer ran, a queue purged by an operator, notifications turned off for a while).
 *
 * @example
 *   const summary = await reconcile(pipeline, glance, { projectId: 'abc' });
 */
export async function reconcile(pipeline: Pipeline, images: ImageService, options: ReconcileOptions = {}): Promise<ReconcileSummary> {
  const started = Date.now();
  const startedSeconds = Math.floor(started / 1000);
  const byProject = new Map<string, OwnedImage[]>();
  let listed = 0;
  for await (const image of images.listImages(options.projectId ? { owner: options.projectId } : {})) {
    // An image with no owner counts against no project, as in Glance's own quota.
    if (image.owner === null || (options.projectId && image.owner !== options.projectId)) continue;
    listed++;
    const list = byProject.get(image.owner) ?? [];
    list.push(image as OwnedImage);
    byProject.set(image.owner, list);
  }
  const projects = options.projectId
    ? [options.projectId]
    : [...new Set([...byProject.keys(), ...(await pipeline.store.projects())])].sort();

  const reports: EnforcementReport[] = [];
  let vanished = 0;
  for (const [i, projectId] of projects.entries()) {
    const inGlance = byProject.get(projectId) ?? [];
    const ids = new Set(inGlance.map((img) => img.id));
    const events: ImageEvent[] = inGlance.map(eventFromGlance);
    for (const record of await pipeline.store.images(projectId)) {
      // Created after the listing began: its absence proves nothing.
      if (record.deleted || ids.has(record.imageId) || record.createdAt >= startedSeconds - 1) continue;
      // Not in this owner's listing: deleted, or given to another project. Only Glance can say.
      const now = await images.getImage(record.imageId);
      if (now && now.owner !== null && now.status !== 'deleted') {
        events.push(eventFromGlance(now as OwnedImage));
      } else {
        events.push(tombstoneOf(record, Date.now()));
        vanished++;
      }
    }
    if (events.length > 0) await pipeline.store.applyEvents(events, Date.now(), { dedupe: false });
    reports.push(options.then === 'defer' ? { ...(await pipeline.evaluate(projectId)), actions: [] } : await pipeline.enforce(projectId));
    options.onProgress?.(i + 1, projects.length, projectId);
  }
  return { projects: reports, listed, vanished, durationMs: Date.now() - started };
}
