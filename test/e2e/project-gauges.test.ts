import { describe, expect, it } from 'vitest';
import { cli, enforcerEnv, lab } from './support/lab.js';
import { oldest, scenario, until } from './support/scenario.js';

/*
 * What an operator sees of a flood: the per-project gauges on /metrics and `status`, against the
 * real Keystone and Glance of the lab.
 */

const { project, consumer } = scenario();

describe('what operators see of a flooded project', () => {
  it('after a flood of 10 against a limit of 5, /metrics shows its image_count_total at 5 of 5, and status names it before a calm project', async () => {
    const p = await project('gauges');
    const calm = await project('calm');
    await calm.createImage('one');
    await p.setLimit('image_count_total', 5);
    const env = enforcerEnv(lab());
    const c = await consumer(env);

    const created = await p.flood(10);
    const left = await until(
      'images left',
      Date.now() + 15_000,
      () => p.images(),
      (m) => m.size === 5,
    );
    expect([...left.keys()].sort()).toEqual(oldest(created, 5));

    // The gauges follow every decision: the last ones, on the deletions' own notifications, say 5.
    const labels = `project="${p.id}",resource="image_count_total"`;
    const gauges = await until(
      'gauges',
      Date.now() + 15_000,
      async () => [await c.metric('gqe_project_usage', labels), await c.metric('gqe_project_limit', labels)],
      ([u, l]) => u === 5 && l === 5,
    );
    expect(gauges).toEqual([5, 5]);

    const status = await until(
      'status',
      Date.now() + 10_000,
      async () => JSON.parse((await cli(['status', '--json'], env)).stdout),
      (s) => s.projects.some((x: { project_id: string; usage: { image_count_total: number } }) => x.project_id === p.id && x.usage.image_count_total === 5),
    );
    const ids = status.projects.map((x: { project_id: string }) => x.project_id);
    const ours = status.projects[ids.indexOf(p.id)];
    expect(ours).toMatchObject({ project_name: p.name, fullness: 1, usage: { image_count_total: 5 }, limits: { image_count_total: 5 }, over: [] });
    expect(status.projects[ids.indexOf(calm.id)]).toMatchObject({ project_name: calm.name, usage: { image_count_total: 1 } });
    expect(ids.indexOf(p.id)).toBeLessThan(ids.indexOf(calm.id));
    const table = (await cli(['status', '--project', p.id], env)).stdout;
    expect(table).toMatch(new RegExp(`^${p.id}\\s+${p.name}\\s+100%\\s+5/5\\s`, 'm'));
  }, 120_000);
});
