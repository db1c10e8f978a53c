/**
 * The oracle of the scale-out tests: a single-process `replay` of the same bodies, and a
 * project-by-project comparison of a shared ledger with it (records, usage, and the decision).
 */
import { isDeepStrictEqual } from 'node:util';
import type { Pipeline, MessageResult } from '../../src/pipeline/index.js';
import type { ImageRecord } from '../../src/ledger/record.js';
import { parseLimits } from '../../src/quota/limits.js';
import { StaticLimits } from '../../src/quota/static-limits.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { LedgerStore } from '../../src/store/port.js';
import { pipelineOf } from '../../src/composition-root.js';

// The port does not fix the order of `images`.
const byId = (records: ImageRecord[]) => records.sort((a, b) => (a.imageId < b.imageId ? -1 : a.imageId > b.imageId ? 1 : 0));

/** A decision pipeline (no Glance) over `store` with QUOTA_LIMITS-style `limits`. */
export function decider(store: LedgerStore, limits: string): Pipeline {
  return pipelineOf({ store, limits: new StaticLimits(parseLimits(limits, 'QUOTA_LIMITS')) });
}

export interface Replay {
  pipeline: Pipeline;
  /** How many bodies were applied, duplicate, ignored, invalid. */
  counts: Record<MessageResult, number>;
}

/** What `replay` does: every body through `Pipeline.ingest`, in order, into a fresh memory ledger. */
export async function replayInMemory(bodies: readonly string[], limits: string, batchSize = 1000): Promise<Replay> {
  const pipeline = decider(new MemoryStore(), limits);
  const counts: Record<MessageResult, number> = { applied: 0, duplicate: 0, ignored: 0, invalid: 0 };
  for (let i = 0; i < bodies.length; i += batchSize) {
    for (const o of (await pipeline.ingest(bodies.slice(i, i + batchSize))).outcomes) counts[o.result]++;
  }
  return { pipeline, counts };
}

export interface LedgerComparison {
  /** One line per disagreement (at most `max`), empty when the ledgers agree. */
  differences: string[];
  projects: number;
  images: number;
  /** Projects over a limit, and images to delete, in the oracle. */
  overProjects: number;
  candidates: number;
}

/**
 * `projects()`, then per project `images`, `usage` and `evaluate` (over, toDelete in removal
 * order) of `shared` against `oracle`.
 */
export async function compareLedgers(shared: Pipeline, oracle: Pipeline, max = 5): Promise<LedgerComparison> {
  const differences: string[] = [];
  const differ = (what: string, got: unknown, want: unknown) => {
    if (differences.length < max) differences.push(`${what}: shared ${JSON.stringify(got)}, replay ${JSON.stringify(want)}`);
    else if (differences.length === max) differences.push('...');
  };
  const [sharedProjects, oracleProjects] = [await shared.ledger.projects(), await oracle.ledger.projects()];
  if (!isDeepStrictEqual(sharedProjects, oracleProjects)) {
    const only = (a: string[], b: string[]) => a.filter((p) => !b.includes(p));
    differ(
      'projects()',
      { count: sharedProjects.length, only: only(sharedProjects, oracleProjects) },
      { count: oracleProjects.length, only: only(oracleProjects, sharedProjects) },
    );
  }
  let images = 0;
  let overProjects = 0;
  let candidates = 0;
  for (const p of oracleProjects) {
    const [got, want] = [byId(await shared.ledger.images(p)), byId(await oracle.ledger.images(p))];
    images += want.length;
    if (!isDeepStrictEqual(got, want)) {
      const wrong = want.filter(
        (r) =>
          !isDeepStrictEqual(
            got.find((g) => g.imageId === r.imageId),
            r,
          ),
      );
      differ(
        `images(${p}) (${wrong.length} of ${want.length} records differ, first)`,
        got.find((g) => g.imageId === wrong[0]?.imageId) ?? null,
        wrong[0] ?? null,
      );
    }
    const [gotUsage, wantUsage] = [await shared.ledger.usage(p), await oracle.ledger.usage(p)];
    if (!isDeepStrictEqual(gotUsage, wantUsage)) differ(`usage(${p})`, gotUsage, wantUsage);
    const [gotDecision, wantDecision] = [await shared.evaluate(p), await oracle.evaluate(p)];
    if (wantDecision.over.length > 0) overProjects++;
    candidates += wantDecision.toDelete.length;
    const pick = (d: typeof wantDecision) => ({ over: d.over, toDelete: d.toDelete });
    if (!isDeepStrictEqual(pick(gotDecision), pick(wantDecision))) differ(`decide(${p})`, pick(gotDecision), pick(wantDecision));
  }
  return { differences, projects: oracleProjects.length, images, overProjects, candidates };
}
