import type { ProjectLimits } from '../quota/limits.js';
import { USAGE_RESOURCES } from '../quota/resources.js';

/** Where a command writes: the process's streams, or a test's buffers. */
export interface Io {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

export const processIo: Io = {
  stdout: (t) => void process.stdout.write(t),
  stderr: (t) => void process.stderr.write(t),
};

/** Columns padded to their widest cell, two spaces apart; every cell made printable by the caller. */
export function table(header: readonly string[], rows: readonly string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return (
    [header, ...rows]
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

/** Limits as operators write them: sizes in MiB, the rate as N/Ws; absent = unlimited. */
export function limitsJson(limits: ProjectLimits): Record<string, number | string> {
  const out: Record<string, number | string> = {};
  for (const r of USAGE_RESOURCES) if (limits[r] !== undefined) out[r] = limits[r];
  if (limits.image_create_rate) out.image_create_rate = `${limits.image_create_rate.count}/${limits.image_create_rate.windowSeconds}s`;
  return out;
}
