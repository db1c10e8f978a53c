import { parser } from '@prometheus-io/lezer-promql';
import { Metrics } from '../../src/metrics.js';

/**
 * The metric names a PromQL expression reads, from Prometheus's own grammar (the Lezer parser its
 * web UI uses): every vector selector's name, and `{__name__="..."}`. A regular expression would
 * take `rate`, `by (project)` or a label value for a metric. An expression that does not parse
 * throws, with where.
 */
export function metricNames(expr: string): string[] {
  const tree = parser.parse(expr);
  const names: string[] = [];
  const cursor = tree.cursor();
  do {
    if (cursor.type.isError) throw new Error(`PromQL does not parse at ${cursor.from}: ${expr.slice(0, cursor.from)} >>> ${expr.slice(cursor.from)}`);
    if (cursor.name === 'VectorSelector') {
      const selector = cursor.node;
      const identifier = selector.getChild('Identifier');
      if (identifier) names.push(expr.slice(identifier.from, identifier.to));
      for (const matcher of selector.getChild('LabelMatchers')?.getChildren('UnquotedLabelMatcher') ?? []) {
        const label = matcher.getChild('LabelName');
        const value = matcher.getChild('StringLiteral');
        if (label && value && expr.slice(label.from, label.to) === '__name__') names.push(JSON.parse(expr.slice(value.from, value.to)));
      }
    }
  } while (cursor.next());
  return names;
}

/** The series names a type exposes: a histogram's buckets, sum and count; a summary's sum and count. */
export function seriesNames(name: string, type: string): string[] {
  if (type === 'histogram') return [`${name}_bucket`, `${name}_sum`, `${name}_count`];
  if (type === 'summary') return [name, `${name}_sum`, `${name}_count`];
  return [name];
}

/** Every series name the enforcer's registry exposes on /metrics, with the metric's type. */
export async function exportedSeries(): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const m of await new Metrics().registry.getMetricsAsJSON()) for (const s of seriesNames(m.name, String(m.type))) out.set(s, String(m.type));
  return out;
}

/** Series Prometheus itself makes for every target it scrapes. */
export const SCRAPE_SERIES = new Set(['up', 'scrape_duration_seconds', 'scrape_samples_scraped']);
