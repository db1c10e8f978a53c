/**
 * What bin/glance-quota-enforcer.js does, over src/ instead of dist/: bench/reconcile.ts bundles it
 * (esbuild) at its start, so that it measures the code as it is in the tree, never a stale build,
 * and runs it under plain node, without a TypeScript loader's memory in its figures.
 */
import { main } from '../src/cli.js';

process.exitCode = await main(process.argv.slice(2));
