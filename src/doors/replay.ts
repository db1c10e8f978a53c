import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { MessageResult, Pipeline, ProjectReport } from '../pipeline/index.js';

export interface ReplaySummary {
  messages: Record<'total' | MessageResult, number>;
  projects: ProjectReport[];
}

export interface ReplayOptions {
  /** Called for every invalid line, with its 1-based line number. */
  onInvalid?: (line: number, reason: string) => void;
  batchSize?: number;
}

/**
 * Feed a file of raw AMQP bodies, one per line as on the wire, through the production pipeline,
 * then decide for every project the file's batches named (`IngestResult.projects`, as every door
 * does). Blank lines are not messages and are skipped. Replay never asks Glance: its decision is
 * the ledger's estimate, which in production only triggers a look at Glance's listing.
 */
export async function replayFile(pipeline: Pipeline, path: string, options: ReplayOptions = {}): Promise<ReplaySummary> {
  const batchSize = options.batchSize ?? 1000;
  const messages = { total: 0, applied: 0, duplicate: 0, ignored: 0, invalid: 0 };
  let batch: string[] = [];
  let lineNumbers: number[] = [];
  const touched = new Set<string>();
  const flush = async () => {
    const result = await pipeline.ingest(batch);
    const { outcomes } = result;
    // The same rule as consume and the functions: the projects a batch names are the ones decided.
    for (const p of result.projects) touched.add(p);
    outcomes.forEach((o, i) => {
      messages[o.result]++;
      if (o.result === 'invalid') options.onInvalid?.(lineNumbers[i]!, o.reason ?? 'invalid');
    });
    batch = [];
    lineNumbers = [];
  };
  const lines = createInterface({ input: createReadStream(path, 'utf8'), crlfDelay: Infinity });
  let n = 0;
  for await (const line of lines) {
    n++;
    if (line.trim() === '') continue;
    messages.total++;
    batch.push(line);
    lineNumbers.push(n);
    if (batch.length >= batchSize) await flush();
  }
  if (batch.length > 0) await flush();
  const projects: ProjectReport[] = [];
  for (const projectId of [...touched].sort()) projects.push(await pipeline.evaluate(projectId));
  return { messages, projects };
}

/** The `--json` document: its shape is the black-box interface of the core (README). */
export function replayJson(summary: ReplaySummary): object {
  return {
    messages: summary.messages,
    projects: summary.projects.map((p) => ({ project_id: p.projectId, usage: p.usage, over: p.over, to_delete: p.toDelete })),
  };
}
