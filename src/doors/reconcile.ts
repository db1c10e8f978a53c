import type { EnforcementReport, ImageService, Pipeline, ProjectReport } from '../pipeline.js';
import type { OwnedImage } from '../ledger/glance-image.js';
import type { CorrectionKind } from '../ledger/repair.js';

export interface ReconcileOptions {
  /** Only this project; otherwise every project that owns images in Glance or live ones in the ledger. */
  projectId?: string;
  /** Called after each project, for a progress bar. */
  onProgress?: (done: number, total: number, projectId: string) => void;
}

export interface ProjectFailure {
  projectId: string;
  error: Error;
}

export interface ReconcileSummary {
  projects: EnforcementReport[];
  /** Images Glance listed. */
  listed: number;
  /** Listed images Glance described in a way the enforcer could not read: left alone, counted. */
  unreadable: number;
  /** How Glance's listing corrected the ledger, by kind, summed over the projects. */
  corrected: Partial<Record<CorrectionKind, number>>;
  /** Projects whose reconcile failed (Glance, Keystone or the store): the rest went on. */
  failures: ProjectFailure[];
  durationMs: number;
}

/**
 * The reconcile door: Glance's listing is the truth. Each project's ledger is overwritten with
 * what Glance lists (src/ledger/repair.ts), and a project Glance shows over its quota is enforced
 * on a fresh listing of its own. Catches up on whatever the bus lost or forged: images made
 * before the enforcer ran, a purged queue, notifications turned off for a while, forged deletes.
 * One project's failure is counted and the others go on.
 *
 * @example
 *   const summary = await reconcile(pipeline, glance, { projectId: 'abc' });
 */
export async function reconcile(pipeline: Pipeline, images: ImageService, options: ReconcileOptions = {}): Promise<ReconcileSummary> {
  const started = pipeline.now();
  const failures: ProjectFailure[] = [];
  const failed = (projectId: string, err: unknown) => failures.push({ projectId, error: err instanceof Error ? err : new Error(String(err)) });
  let unreadable = 0;
  const onUnreadable = () => void unreadable++;

  if (options.projectId) {
    // One project: its own listing is fresh, so the truth path decides and acts on it at once.
    const projectId = options.projectId;
    const projects: EnforcementReport[] = [];
    try {
      projects.push(await pipeline.enforceOnGlance(projectId));
    } catch (err) {
      failed(projectId, err);
    }
    options.onProgress?.(1, 1, projectId);
    return { projects, listed: projects[0]?.usage.image_count_total ?? 0, unreadable, corrected: sumCorrected(projects), failures, durationMs: pipeline.now() - started };
  }

  const byProject = new Map<string, OwnedImage[]>();
  const everyId = new Set<string>();
  let listed = 0;
  for await (const image of images.listImages({ onUnreadable })) {
    // An image with no owner counts against no project, as in Glance's own quota.
    if (image.owner === null) continue;
    listed++;
    everyId.add(image.id);
    const list = byProject.get(image.owner) ?? [];
    list.push(image as OwnedImage);
    byProject.set(image.owner, list);
  }
  const projects = [...new Set([...byProject.keys(), ...(await pipeline.projects())])].sort();

  const reports: EnforcementReport[] = [];
  for (const [i, projectId] of projects.entries()) {
    try {
      const judged: ProjectReport = await pipeline.applyListing(projectId, byProject.get(projectId) ?? [], started, everyId);
      reports.push(judged.toDelete.length > 0 ? await pipeline.enforceOnGlance(projectId) : { ...judged, actions: [] });
    } catch (err) {
      failed(projectId, err);
    }
    options.onProgress?.(i + 1, projects.length, projectId);
  }
  return { projects: reports, listed, unreadable, corrected: sumCorrected(reports), failures, durationMs: pipeline.now() - started };
}

function sumCorrected(reports: readonly ProjectReport[]): Partial<Record<CorrectionKind, number>> {
  const sum: Partial<Record<CorrectionKind, number>> = {};
  for (const r of reports) for (const [k, n] of Object.entries(r.corrected ?? {}) as [CorrectionKind, number][]) sum[k] = (sum[k] ?? 0) + n;
  return sum;
}
