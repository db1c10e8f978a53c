import type { EnforcementReport } from '../../pipeline/index.js';
import type { ActionKind } from '../../store/port.js';
import type { MessageCounts } from './batch.js';

/**
 * The functions' metrics, in CloudWatch's embedded metric format (EMF): JSON lines on stdout
 * that CloudWatch Logs turns into metrics, with no API call, no agent and no extra dependency
 * (the container's Prometheus `/metrics` has no place in a function). Namespace
 * `GlanceQuotaEnforcer`, every metric with the dimension `function`:
 *
 * - `Messages` by `result` (applied, duplicate, ignored, invalid), as `gqe_messages_total`;
 * - `Actions` by `action` (deleted, would-delete, skipped, protected, not-deletable, gone), as `gqe_actions_total`;
 * - `EnforcementErrors`: projects whose enforcement failed (Keystone, Glance), 0 included, so an
 *   alarm on it sees every invocation; `StoreErrors`: batch writes that failed;
 *   `EnforcementAbandoned` (only when there are some): projects left to the reconcile after
 *   ENFORCE_MAX_ATTEMPTS failed invocations, as `gqe_enforcement_abandoned_total`.
 *
 * Written with `process.stdout.write`, not `console.log`: Lambda's Node runtime prefixes
 * console lines with a timestamp and the request id, and CloudWatch reads EMF only from a line
 * that is JSON from its first character.
 */
export const NAMESPACE = 'GlanceQuotaEnforcer';

/** Where EMF documents go: one JSON line each. */
export type MetricsSink = (line: string) => void;

export const stdoutMetrics: MetricsSink = (line) => {
  process.stdout.write(line + '\n');
};

export interface InvocationMetrics {
  messages?: MessageCounts;
  reports?: readonly EnforcementReport[];
  enforcementErrors?: number;
  storeErrors?: number;
  /** Projects left to the reconcile after ENFORCE_MAX_ATTEMPTS failed invocations (Amazon MQ). */
  abandoned?: number;
}

/** One EMF document: `values` under the dimensions `function` and, when given, one more. */
export function emfDocument(fn: string, values: Record<string, number>, dimension?: [string, string], now = Date.now()): string {
  const dimensions = dimension ? [['function', dimension[0]]] : [['function']];
  return JSON.stringify({
    _aws: {
      Timestamp: now,
      CloudWatchMetrics: [{ Namespace: NAMESPACE, Dimensions: dimensions, Metrics: Object.keys(values).map((Name) => ({ Name, Unit: 'Count' })) }],
    },
    function: fn,
    ...(dimension ? { [dimension[0]]: dimension[1] } : {}),
    ...values,
  });
}

/**
 * The EMF documents of one invocation: a document per message result and per action kind seen
 * (a dimension takes one value per document), and one with the error counts, always.
 *
 * @example
 *   writeInvocationMetrics(sink, 'sqs', { messages, reports, enforcementErrors: failures.length });
 */
export function writeInvocationMetrics(sink: MetricsSink, fn: string, m: InvocationMetrics, now = Date.now()): void {
  for (const [result, n] of Object.entries(m.messages ?? {})) if (n > 0) sink(emfDocument(fn, { Messages: n }, ['result', result], now));
  const actions = new Map<ActionKind, number>();
  for (const r of m.reports ?? []) for (const a of r.actions) actions.set(a.action, (actions.get(a.action) ?? 0) + 1);
  for (const [action, n] of actions) sink(emfDocument(fn, { Actions: n }, ['action', action], now));
  const errors = { EnforcementErrors: m.enforcementErrors ?? 0, StoreErrors: m.storeErrors ?? 0 };
  sink(emfDocument(fn, m.abandoned ? { ...errors, EnforcementAbandoned: m.abandoned } : errors, undefined, now));
}
