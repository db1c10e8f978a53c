/**
 * The function bundles serverless.yml packages: one esbuild bundle per function
 * (`dist/lambda/<name>/index.mjs`), ESM, tree-shaken, minified, with source maps.
 *
 *   npm run build:functions        # npm run build (and so npm ci) runs it too
 *
 * Why a bundle: the whole `node_modules` was 14 MB zipped and its handler took about 470 ms to
 * import, on every cold start. Why a build step of ours rather than a Serverless plugin: it is
 * one esbuild call, it runs offline like `serverless package`, and the tests and the cold-start
 * bench build exactly what is deployed.
 *
 * - Code splitting: what a handler imports only on demand (a store adapter by STORE_URL's
 *   scheme, the SQS client for poison, the Secrets Manager / SSM clients) becomes a chunk that
 *   a cold start does not read unless it needs it.
 * - The SQLite adapter and better-sqlite3 are left out: the functions refuse `sqlite://` before
 *   any store is opened, and its native addon is built for the packaging machine's Node ABI.
 *   `pg-native` is pg's optional native binding, which pg only tries when asked for.
 * - The banner gives the ESM bundle a `require`, for the CommonJS dependencies (pino, pg,
 *   ioredis) that `require` Node's built-ins.
 */
import { rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { build, type Metafile, type Plugin } from 'esbuild';

export const FUNCTION_NAMES = ['amazonmq', 'sqs', 'reconcile'] as const;
export type FunctionName = (typeof FUNCTION_NAMES)[number];

const ROOT = join(import.meta.dirname, '..');
export const DEFAULT_OUT_DIR = join(ROOT, 'dist', 'lambda');

/** Never bundled: see above. */
export const EXTERNAL = ['pg-native'];

export interface BuiltFunction {
  name: FunctionName;
  /** The directory serverless.yml packages for this function; its handler is `index.handler`. */
  dir: string;
  /** Every input file of the bundle (project sources and node_modules paths). */
  inputs: string[];
  /** Bytes of JavaScript written (chunks included, source maps not). */
  bytes: number;
  /** The inputs of what importing the handler loads (the entry and its static imports), with their bytes in the output. */
  loadedAtImport: Record<string, number>;
}

/**
 * Bundles each function into `<outDir>/<name>/`, replacing what was there.
 *
 * @example
 *   const built = await buildFunctions();   // dist/lambda/{amazonmq,sqs,reconcile}/index.mjs
 */
export async function buildFunctions(outDir = DEFAULT_OUT_DIR): Promise<BuiltFunction[]> {
  const built: BuiltFunction[] = [];
  for (const name of FUNCTION_NAMES) {
    const dir = join(outDir, name);
    rmSync(dir, { recursive: true, force: true });
    const { metafile } = await build({
      entryPoints: { index: join(ROOT, 'functions', `${name}.ts`) },
      outdir: dir,
      bundle: true,
      splitting: true,
      format: 'esm',
      platform: 'node',
      target: 'node22',
      outExtension: { '.js': '.mjs' },
      chunkNames: 'chunks/[name]-[hash]',
      mainFields: ['module', 'main'],
      external: EXTERNAL,
      minify: true,
      // Error classes are told apart by name in logs and tests (`ConfigError`, `EnforcementFailedError`).
      keepNames: true,
      sourcemap: 'linked',
      // Stack traces name the .ts file and line (NODE_OPTIONS=--enable-source-maps); the sources
      // themselves stay out of the artifact.
      sourcesContent: false,
      legalComments: 'none',
      metafile: true,
      logLevel: 'warning',
      plugins: [luaInline, builtinsThroughRequire, zodAsNamespace, noSqlite],
      banner: { js: "import { createRequire as __gqeCreateRequire } from 'node:module'; const require = __gqeCreateRequire(import.meta.url);" },
    });
    built.push({ name, dir, inputs: Object.keys(metafile.inputs), bytes: outputBytes(metafile), loadedAtImport: loadedAtImport(metafile) });
  }
  return built;
}

/**
 * `import http from 'node:http'` in ESM builds the built-in's ESM facade, which reads every one
 * of its exports, lazy ones included: `node:http` then loads undici (for `http.WebSocket`) and
 * `node:crypto` all of WebCrypto, about 50 ms of a cold start for nothing. The same module through
 * `require` (the banner's) reads only what is used.
 */
const builtinsThroughRequire: Plugin = {
  name: 'builtins-through-require',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) => (args.kind === 'import-statement' ? { path: args.path, namespace: 'builtin' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'builtin' }, (args) => ({ contents: `module.exports = require(${JSON.stringify(args.path)});`, loader: 'js' }));
  },
};

/**
 * `import { z } from 'zod'` takes zod's `z` as one object, which esbuild cannot tree-shake: 450 KB
 * of zod (every locale) in every bundle, parsed at every cold start. `import * as z from 'zod'`
 * (what zod 4's documentation writes) is the same API with only what is used: about 85 KB. The
 * sources are read with that one line rewritten; nothing else changes.
 */
const ZOD_IMPORT = /^import \{ z \} from 'zod';$/gm;
const zodAsNamespace: Plugin = {
  name: 'zod-as-namespace',
  setup(b) {
    b.onLoad({ filter: /[\\/](src|functions)[\\/].*\.ts$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8');
      const rewritten = source.replace(ZOD_IMPORT, "import * as z from 'zod';");
      return rewritten === source ? undefined : { contents: rewritten, loader: 'ts' };
    });
  },
};

/**
 * The Redis ledger reads its Lua scripts from files beside src/store/redis/scripts.ts when it
 * loads; a bundle has no such files, so each `lua('name')` call there becomes the file's text.
 */
const LUA_CALL = /\blua\('([a-z-]+)'\)/g;
const luaInline: Plugin = {
  name: 'lua-inline',
  setup(b) {
    b.onLoad({ filter: /[\\/]store[\\/]redis[\\/]scripts\.ts$/ }, async (args) => {
      const source = await readFile(args.path, 'utf8');
      const names = [...source.matchAll(LUA_CALL)].map((m) => m[1]!);
      const texts = new Map(await Promise.all(names.map(async (n) => [n, await readFile(join(dirname(args.path), `${n}.lua`), 'utf8')] as const)));
      return { contents: source.replace(LUA_CALL, (_, n: string) => JSON.stringify(texts.get(n))), loader: 'ts' };
    });
  },
};

/** The store index's `import('./sqlite.js')`, in a function, is this: a refusal, and no SQLite code at all. */
const noSqlite: Plugin = {
  name: 'no-sqlite',
  setup(b) {
    b.onResolve({ filter: /^\.\/sqlite\.js$/ }, (args) =>
      /[\\/]store[\\/]index\.ts$/.test(args.importer) ? { path: 'sqlite', namespace: 'no-sqlite' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'no-sqlite' }, () => ({
      contents: `export const SqliteStore = { open() { throw new Error('STORE_URL: sqlite:// is not in the function bundles; a function needs a shared ledger, postgres:// or redis://'); } };`,
      loader: 'js',
    }));
  },
};

function loadedAtImport(metafile: Metafile): Record<string, number> {
  const entry = Object.keys(metafile.outputs).find((f) => f.endsWith('/index.mjs'))!;
  const loaded: Record<string, number> = {};
  const seen = new Set<string>();
  const next = [entry];
  for (let file = next.pop(); file !== undefined; file = next.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    const output = metafile.outputs[file]!;
    for (const [input, { bytesInOutput }] of Object.entries(output.inputs)) loaded[input] = (loaded[input] ?? 0) + bytesInOutput;
    for (const i of output.imports) if (i.kind === 'import-statement' && !i.external) next.push(i.path);
  }
  return loaded;
}

function outputBytes(metafile: Metafile): number {
  return Object.entries(metafile.outputs)
    .filter(([file]) => file.endsWith('.mjs'))
    .reduce((n, [, o]) => n + o.bytes, 0);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const built = await buildFunctions(process.argv[2] ?? DEFAULT_OUT_DIR);
  for (const b of built) console.log(`${b.name}: ${(b.bytes / 1024).toFixed(0)} KiB of JavaScript in ${b.dir}`);
}
