import { describe, expect, it } from 'vitest';
import { pipelineOf } from '../../src/composition-root.js';
import { Metrics } from '../../src/metrics.js';
import type { ProjectReport } from '../../src/pipeline/index.js';
import { fullness, NearestProjects, nearestFirst, type ProjectFill } from '../../src/quota/nearest.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import { captures } from '../support/fixtures.js';
import { MemoryGlance } from '../functions/support.js';

const NONE = { image_count_total: 0, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 };

/** A project holding `count` images against a count limit of `limit` (undefined: unlimited). */
function project(projectId: string, count: number, limit?: number): ProjectFill {
  return {
    projectId,
    usage: { ...NONE, image_count_total: count },
    limits: limit === undefined ? {} : { image_count_total: limit },
    over: limit !== undefined && limit >= 0 && count > limit ? ['image_count_total'] : [],
  };
}

/** Every series of `name` in the text a scrape gets, as `labels -> value`. */
async function series(metrics: Metrics, name: string): Promise<Map<string, number>> {
  const text = await metrics.registry.metrics();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = new RegExp(`^${name}\\{(.*)\\} (\\S+)$`).exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

/** The project ids that have series of `name`. */
async function projectsIn(metrics: Metrics, name = 'gqe_project_usage'): Promise<string[]> {
  return [...new Set([...(await series(metrics, name)).keys()].map((labels) => /project="([^"]*)"/.exec(labels)![1]!))].sort();
}

describe('how near a project is to its limits', () => {
  it('is its fullest resource, usage over limit; a limit of 0 is full at once, unlimited is nowhere', () => {
    expect(fullness({ ...NONE, image_count_total: 10, image_size_total: 50 }, { image_count_total: 5, image_size_total: 100 })).toBe(2);
    expect(fullness({ ...NONE, image_size_total: 90 }, { image_count_total: 5, image_size_total: 100 })).toBe(0.9);
    expect(fullness(NONE, { image_count_total: 0 })).toBe(1);
    expect(fullness({ ...NONE, image_count_total: 1 }, { image_count_total: 0 })).toBe(Infinity);
    expect(fullness({ ...NONE, image_count_total: 1000 }, { image_count_total: -1 })).toBeUndefined();
    expect(fullness({ ...NONE, image_count_total: 1000 }, {})).toBeUndefined();
  });

  it('orders projects over a limit first, then the fullest, those with no limit last, ties by id', () => {
    const rateOnly: ProjectFill = { ...project('rate', 1, 100), over: ['image_create_rate'] };
    const sorted = [
      project('none', 500),
      project('half', 5, 10),
      project('b-full', 10, 10),
      project('a-full', 10, 10),
      rateOnly,
      project('twice', 20, 10),
    ].sort(nearestFirst);
    expect(sorted.map((p) => p.projectId)).toEqual(['twice', 'rate', 'a-full', 'b-full', 'half', 'none']);
  });
});

describe('the N projects nearest their limits', () => {
  it('keeps the nearest N as decisions come, and says which project left', () => {
    const nearest = new NearestProjects(2);
    expect(nearest.observe(project('p1', 1, 10))).toEqual([]);
    expect(nearest.observe(project('p2', 5, 10))).toEqual([]);
    expect(nearest.observe(project('p3', 2, 10))).toEqual(['p1']);
    expect(nearest.observe(project('p4', 0, 10))).toEqual([]);
    expect(nearest.list().map((p) => p.projectId)).toEqual(['p2', 'p3']);
    // A kept project's new figures replace its old ones, nearer or not.
    expect(nearest.observe(project('p3', 20, 10))).toEqual([]);
    expect(nearest.list().map((p) => [p.projectId, p.usage.image_count_total])).toEqual([
      ['p3', 20],
      ['p2', 5],
    ]);
  });

  it("after a whole pass holds exactly the pass's nearest, except the projects the pass failed on", () => {
    const nearest = new NearestProjects(3);
    for (const p of [project('a', 9, 10), project('b', 8, 10), project('c', 7, 10)]) nearest.observe(p);
    const left = nearest.replaceAll([project('a', 1, 10), project('b', 8, 10), project('d', 6, 10), project('e', 5, 10)], new Set(['c']));
    expect(left).toEqual(['a']);
    expect(nearest.list().map((p) => p.projectId)).toEqual(['b', 'c', 'd']);
  });
});

describe('per-project gauges on /metrics', () => {
  it('never hold more than METRICS_PROJECTS projects, whatever the cloud holds, and name the nearest', async () => {
    const metrics = new Metrics({ projects: 100 });
    // 10,000 projects, each decided once; project i holds i % 97 images against a limit of 50.
    for (let i = 0; i < 10_000; i++) metrics.observeDecision(project(`p${String(i).padStart(5, '0')}`, i % 97, 50));
    const usage = await series(metrics, 'gqe_project_usage');
    expect(usage.size).toBe(100 * 4);
    expect((await series(metrics, 'gqe_project_limit')).size).toBe(100);
    // The 100 fullest: 96 images against 50 is the most any project holds; 103 projects hold it.
    for (const [labels, value] of usage) if (labels.endsWith('resource="image_count_total"')) expect(value).toBe(96);
    // Every project over its limit is counted, not only those with gauges: 46 of every 97 hold 51 to 96.
    const overCount = Array.from({ length: 10_000 }, (_, i) => i % 97).filter((n) => n > 50).length;
    expect(await series(metrics, 'gqe_projects_over_limit')).toEqual(
      new Map([
        ['resource="image_count_total"', overCount],
        ['resource="image_count_uploading"', 0],
        ['resource="image_size_total"', 0],
        ['resource="image_stage_total"', 0],
        ['resource="image_create_rate"', 0],
      ]),
    );
  });

  it('show usage against limit for the flooded project, with no limit series for an unlimited resource', async () => {
    const metrics = new Metrics({ projects: 10 });
    metrics.observeDecision({
      projectId: 'flooded',
      usage: { ...NONE, image_count_total: 10 },
      limits: { image_count_total: 5, image_size_total: -1 },
      over: ['image_count_total'],
    });
    expect(await series(metrics, 'gqe_project_usage')).toEqual(
      new Map([
        ['project="flooded",resource="image_count_total"', 10],
        ['project="flooded",resource="image_count_uploading"', 0],
        ['project="flooded",resource="image_size_total"', 0],
        ['project="flooded",resource="image_stage_total"', 0],
      ]),
    );
    expect(await series(metrics, 'gqe_project_limit')).toEqual(new Map([['project="flooded",resource="image_count_total"', 5]]));
    expect((await series(metrics, 'gqe_projects_over_limit')).get('resource="image_count_total"')).toBe(1);

    // The enforcer deleted the excess: the image.delete notifications bring the project to 5 of 5.
    metrics.observeDecision({ projectId: 'flooded', usage: { ...NONE, image_count_total: 5 }, limits: { image_count_total: 5 }, over: [] });
    expect((await series(metrics, 'gqe_project_usage')).get('project="flooded",resource="image_count_total"')).toBe(5);
    expect((await series(metrics, 'gqe_project_limit')).get('project="flooded",resource="image_count_total"')).toBe(5);
    expect((await series(metrics, 'gqe_projects_over_limit')).get('resource="image_count_total"')).toBe(0);
  });

  it('drop a project from the registry when a nearer one takes its place, and after a pass that no longer ranks it', async () => {
    const metrics = new Metrics({ projects: 2 });
    metrics.observeDecision(project('calm', 1, 10));
    metrics.observeDecision(project('busy', 8, 10));
    expect(await projectsIn(metrics)).toEqual(['busy', 'calm']);
    metrics.observeDecision(project('flooded', 30, 10));
    expect(await projectsIn(metrics)).toEqual(['busy', 'flooded']);
    expect(await projectsIn(metrics, 'gqe_project_limit')).toEqual(['busy', 'flooded']);

    // The reconcile pass: 'flooded' was brought back to 10, 'busy' emptied, 'calm' and 'new' grew.
    metrics.observePass([project('flooded', 10, 10), project('busy', 0, 10), project('calm', 9, 10), project('new', 3, 10)]);
    expect(await projectsIn(metrics)).toEqual(['calm', 'flooded']);
    expect((await series(metrics, 'gqe_projects_over_limit')).get('resource="image_count_total"')).toBe(0);
  });

  it('keep what the last decision said of a project the pass could not decide', async () => {
    const metrics = new Metrics({ projects: 5 });
    metrics.observeDecision(project('unreachable', 30, 10));
    metrics.observeDecision(project('gone', 20, 10));
    metrics.observePass([project('other', 1, 10)], new Set(['unreachable']));
    expect(await projectsIn(metrics)).toEqual(['other', 'unreachable']);
    expect((await series(metrics, 'gqe_projects_over_limit')).get('resource="image_count_total"')).toBe(1);
  });

  it('METRICS_PROJECTS=0 exports no per-project series, and still counts the projects over', async () => {
    const metrics = new Metrics({ projects: 0 });
    metrics.observeDecision(project('flooded', 30, 10));
    expect(await projectsIn(metrics)).toEqual([]);
    expect((await series(metrics, 'gqe_projects_over_limit')).get('resource="image_count_total"')).toBe(1);
  });
});

describe('the pipeline reports every decision', () => {
  it("gives the ledger's estimate and Glance's listing to onDecision", async () => {
    const now = Date.UTC(2026, 11, 1);
    const decisions: ProjectReport[] = [];
    const bodies = captures().map((c) => c.body);
    const pipeline = pipelineOf({
      store: new MemoryStore(),
      limits: new StaticLimits({ image_count_total: 0 }),
      images: new MemoryGlance(),
      clock: () => now,
      mode: 'dry-run',
      onDecision: (r) => decisions.push(r),
    });
    const { projects } = await pipeline.ingest(bodies);
    const p = projects[0]!;
    await pipeline.evaluate(p);
    const report = await pipeline.enforceOnGlance(p);
    expect(decisions.map((d) => [d.projectId, d.basis])).toEqual([
      [p, 'ledger'],
      [p, 'glance'],
    ]);
    expect(decisions[1]).toMatchObject({ usage: report.usage, limits: { image_count_total: 0 }, over: report.over });
  });
});
