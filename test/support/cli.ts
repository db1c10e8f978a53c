import { main } from '../../src/cli.js';

/**
 * The CLI's `main` in this process, as the bin runs it, with `env` over the process environment
 * (restored after) and its output captured: the exit code, stdout and stderr.
 */
export async function runCli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const saved = { ...process.env };
  Object.assign(process.env, { LOG_LEVEL: 'silent' }, env);
  try {
    const code = await main(args, {
      stdout: (t) => {
        stdout += t;
      },
      stderr: (t) => {
        stderr += t;
      },
    });
    return { code, stdout, stderr };
  } finally {
    process.env = saved;
  }
}
