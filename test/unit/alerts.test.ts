import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml, stringify } from 'yaml';
import { kustomizeBuild } from '../support/kustomize.js';

/*
 * The alerts operators get are evaluated by Prometheus itself: `promtool test rules` (Debian's
 * `prometheus` package; .ci/run installs it) over the PrometheusRule the Kubernetes overlays
 * render, against test/alerts/prometheusrule.promtool.yaml.
 */

const ROOT = join(import.meta.dirname, '..', '..');
const TESTS = join(ROOT, 'test', 'alerts', 'prometheusrule.promtool.yaml');

interface RuleTest {
  name: string;
  input_series: { series: string; values: string }[];
  alert_rule_test?: { eval_time: string; alertname: string; exp_alerts: unknown[] }[];
}

function promtool(args: string[], cwd: string): { status: number | null; output: string } {
  const r = spawnSync('promtool', args, { cwd, encoding: 'utf8', timeout: 60_000 });
  if (r.error)
    throw new Error(
      `promtool: ${r.error.message}. It comes with Debian's prometheus package: apt-get install --no-install-recommends prometheus (.ci/run installs it)`,
    );
  return { status: r.status, output: r.stdout + r.stderr };
}

describe('the shipped PrometheusRule, under promtool', () => {
  type Rule = { spec: { groups: { rules: { alert: string }[] }[] } };
  const overlays = readdirSync(join(ROOT, 'deploy', 'kubernetes', 'overlays'));
  const ruleOf = (overlay: string) =>
    kustomizeBuild(join(ROOT, 'deploy', 'kubernetes', 'overlays', overlay)).find((m) => m.kind === 'PrometheusRule') as unknown as Rule;
  const rendered = ruleOf('sqlite');
  const alerts = rendered.spec.groups.flatMap((g) => g.rules.map((r) => r.alert));
  const tests = (parseYaml(readFileSync(TESTS, 'utf8')) as { tests: RuleTest[] }).tests;

  it('passes `promtool check rules` and `promtool test rules`', () => {
    // The rule file promtool reads is the PrometheusRule's spec, exactly as kubectl would apply it.
    const dir = mkdtempSync(join(tmpdir(), 'gqe-alerts-'));
    writeFileSync(join(dir, 'rules.yaml'), stringify(rendered.spec));
    copyFileSync(TESTS, join(dir, 'tests.yaml'));
    const check = promtool(['check', 'rules', 'rules.yaml'], dir);
    expect(check.status, check.output).toBe(0);
    const run = promtool(['test', 'rules', 'tests.yaml'], dir);
    expect(run.status, run.output).toBe(0);
    expect(run.output).toContain('SUCCESS');
  });

  it('is the rule every overlay ships', () => {
    for (const overlay of overlays) expect({ [overlay]: ruleOf(overlay).spec }).toEqual({ [overlay]: rendered.spec });
  });

  it('has, for every alert, a moment it fires and one it is quiet, with a series that never fires beside the one that does', () => {
    const checks = tests.flatMap((t) => (t.alert_rule_test ?? []).map((a) => ({ test: t, ...a })));
    // A misspelt alertname would pass quietly: promtool expects no alert of a name no rule has.
    expect(checks.map((c) => c.alertname).filter((name) => !alerts.includes(name))).toEqual([]);
    for (const alert of alerts) {
      const mine = checks.filter((c) => c.alertname === alert);
      const firing = mine.filter((c) => c.exp_alerts.length > 0);
      expect(firing.length, `${alert} fires in no test`).toBeGreaterThan(0);
      expect(
        mine.some((c) => c.exp_alerts.length === 0),
        `${alert} is quiet in no test`,
      ).toBe(true);
      // promtool compares the whole list of alerts: a series beside the firing ones that raises
      // none is a quiet series.
      for (const c of firing) expect(c.test.input_series.length, `${alert} in '${c.test.name}': no quiet series`).toBeGreaterThan(c.exp_alerts.length);
    }
  });
});
