import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { exportedSeries, metricNames, seriesNames } from '../support/promql.js';

/*
 * deploy/grafana/glance-quota-enforcer.json, the dashboard operators import: every query parses as
 * PromQL and reads only series the enforcer's registry exports.
 */

const DASHBOARD = join(import.meta.dirname, '..', '..', 'deploy', 'grafana', 'glance-quota-enforcer.json');

/**
 * Coming from the admission endpoint (issue 23's door, built beside this dashboard): its metrics
 * are not in this branch's registry yet. Once they are, the test checks them there like any other,
 * type included, and this list only says what the dashboard expects of them.
 */
const COMING_FROM_THE_ADMISSION_ENDPOINT = [
  { name: 'gqe_admission_decisions_total', type: 'counter' },
  { name: 'gqe_admission_seconds', type: 'histogram' },
];

/** Grafana's variable syntax (not a template string): how every query names its data source. */
const DATASOURCE_VARIABLE = '$' + '{datasource}';

interface Panel {
  title: string;
  type: string;
  id: number;
  datasource?: { uid: string };
  targets?: { expr: string; datasource?: { uid: string } }[];
  panels?: Panel[];
}
const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: string | { query: string } }[] };
};
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);

/** Grafana's variables as values PromQL accepts: `$__rate_interval` a range, `$job` a label value. */
function withVariables(expr: string): string {
  return expr.replace(/\$__\w+/g, '5m').replace(/\$\{?\w+\}?/g, 'x');
}

/** Every PromQL the dashboard runs: panel targets, and the metric of each `label_values(...)` variable. */
function queries(): { where: string; expr: string }[] {
  const out = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel '${p.title}'`, expr: withVariables(t.expr) })));
  for (const v of dashboard.templating.list) {
    const text = typeof v.query === 'string' ? v.query : v.query.query;
    const m = /^label_values\((.+),\s*\w+\)$/.exec(text);
    if (m) out.push({ where: `variable '${v.name}'`, expr: withVariables(m[1]!) });
  }
  return out;
}

describe('the Grafana dashboard', () => {
  it('queries only series the enforcer exports (or that the admission endpoint will)', async () => {
    const exported = await exportedSeries();
    const coming = new Map<string, string>();
    for (const m of COMING_FROM_THE_ADMISSION_ENDPOINT) {
      for (const s of seriesNames(m.name, m.type)) {
        // Once the endpoint's metrics are in the registry, they must be what the dashboard expects.
        if (exported.has(s)) expect({ [s]: exported.get(s) }).toEqual({ [s]: m.type });
        else coming.set(s, m.type);
      }
    }
    const unknown: string[] = [];
    const used = new Set<string>();
    for (const q of queries()) {
      for (const name of metricNames(q.expr)) {
        used.add(name);
        if (!exported.has(name) && !coming.has(name)) unknown.push(`${q.where}: ${name}`);
      }
    }
    expect(unknown).toEqual([]);
    // What operators asked to see: projects nearest their limits, deletions and refusals, lag,
    // dead letters, corrections, admission decisions.
    expect([...used]).toEqual(
      expect.arrayContaining([
        'gqe_project_usage',
        'gqe_project_limit',
        'gqe_projects_over_limit',
        'gqe_actions_total',
        'gqe_notification_lag_seconds_bucket',
        'gqe_messages_total',
        'gqe_ledger_corrections_total',
        'gqe_admission_decisions_total',
        'gqe_admission_seconds_bucket',
      ]),
    );
  });

  it('reads PromQL with its grammar: a broken query fails the test, label values are not metrics', () => {
    expect(() => metricNames('sum(rate(gqe_actions_total[5m])')).toThrow(/does not parse/);
    expect(metricNames('sum by (action) (rate(gqe_actions_total{action="gqe_fake"}[5m])) / on (job) {__name__="gqe_messages_total"}')).toEqual([
      'gqe_actions_total',
      'gqe_messages_total',
    ]);
  });

  it('imports anywhere: every query uses the datasource variable, panel ids are unique, the grid is 24 wide', () => {
    expect(dashboard.uid).toBe('glance-quota-enforcer');
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const p of panels.filter((p) => p.type !== 'row')) {
      expect({ [p.title]: p.datasource?.uid }).toEqual({ [p.title]: DATASOURCE_VARIABLE });
      for (const t of p.targets ?? []) expect({ [p.title]: t.datasource?.uid }).toEqual({ [p.title]: DATASOURCE_VARIABLE });
    }
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels as (Panel & { gridPos: { x: number; w: number } })[]) expect(p.gridPos.x + p.gridPos.w).toBeLessThanOrEqual(24);
  });
});
