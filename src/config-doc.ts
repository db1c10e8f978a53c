import { z } from 'zod';
import { EnvSchema } from './config.js';

/**
 * README's table of environment variables, made from the schema itself (`npm run docs:env`
 * prints it; test/unit/config.test.ts fails when README holds another).
 */
export function envTable(schema: z.ZodObject = EnvSchema): string {
  const json = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as {
    properties: Record<string, { default?: unknown; description?: string }>;
  };
  const rows = Object.entries(json.properties).map(([name, p]) => {
    const def = p.default === undefined || p.default === '' ? '(none)' : `\`${String(p.default)}\``;
    return `| \`${name}\` | ${def} | ${p.description ?? ''} |`;
  });
  return ['| variable | default | meaning |', '| --- | --- | --- |', ...rows].join('\n');
}

const START = /<!-- env-table:start[^>]*-->\n/;
const END = '<!-- env-table:end -->';

/** README.md with its table replaced by the schema's (`npm run docs:env`). */
export function withEnvTable(readme: string): string {
  const start = START.exec(readme);
  const end = readme.indexOf(END);
  if (!start || end < 0) throw new Error('README.md: the env-table:start / env-table:end markers are missing');
  return readme.slice(0, start.index + start[0].length) + envTable() + '\n' + readme.slice(end);
}
