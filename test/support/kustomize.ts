import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments, parse as parseYaml } from 'yaml';

/*
 * The part of `kustomize build` that deploy/kubernetes uses, so a test can render the manifests
 * without a kustomize binary: resources (files and directories), strategic-merge patches of one
 * object each (lists of named items merged by name), images and namespace. A kustomization using
 * anything else is refused, so what the test renders is what `kubectl apply -k` applies.
 */

export type Manifest = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; [k: string]: unknown }; [k: string]: unknown };

const SUPPORTED = new Set(['apiVersion', 'kind', 'resources', 'patches', 'images', 'namespace']);

type Plain = Record<string, unknown>;
const isPlain = (v: unknown): v is Plain => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Strategic merge as kustomize does it for these fields: maps deep, named lists by name, the rest replaced. */
export function strategicMerge(base: unknown, patch: unknown): unknown {
  if (isPlain(base) && isPlain(patch)) {
    const out: Plain = { ...base };
    for (const [k, v] of Object.entries(patch)) out[k] = k in base ? strategicMerge(base[k], v) : v;
    return out;
  }
  const named = (l: unknown): l is Plain[] => Array.isArray(l) && l.every((i) => isPlain(i) && typeof i.name === 'string');
  if (named(base) && named(patch)) {
    const out = base.map((item) => {
      const over = patch.find((p) => p.name === item.name);
      return over ? strategicMerge(item, over) : item;
    });
    for (const p of patch) if (!base.some((b) => b.name === p.name)) out.push(p);
    return out;
  }
  return patch;
}

function readDocs(file: string): Manifest[] {
  return parseAllDocuments(readFileSync(file, 'utf8'))
    .map((d) => d.toJS() as Manifest | null)
    .filter((d): d is Manifest => d !== null);
}

function containersOf(m: Manifest): Plain[] {
  const pod = (m as { spec?: { template?: { spec?: { containers?: Plain[]; initContainers?: Plain[] } } } }).spec?.template?.spec;
  return [...(pod?.containers ?? []), ...(pod?.initContainers ?? [])];
}

export function kustomizeBuild(dir: string): Manifest[] {
  const k = parseYaml(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Plain;
  const unknown = Object.keys(k).filter((key) => !SUPPORTED.has(key));
  if (unknown.length) throw new Error(`${dir}/kustomization.yaml: ${unknown.join(', ')} not supported by this renderer; use ${[...SUPPORTED].join(', ')}`);
  let out: Manifest[] = [];
  for (const r of (k.resources as string[] | undefined) ?? []) {
    const path = join(dir, r);
    out.push(...(statSync(path).isDirectory() ? kustomizeBuild(path) : readDocs(path)));
  }
  for (const p of (k.patches as { path: string }[] | undefined) ?? []) {
    for (const patch of readDocs(join(dir, p.path))) {
      const i = out.findIndex((m) => m.kind === patch.kind && m.metadata.name === patch.metadata.name);
      if (i < 0) throw new Error(`${dir}/${p.path}: no ${patch.kind} ${patch.metadata.name} to patch`);
      out[i] = strategicMerge(out[i], patch) as Manifest;
    }
  }
  for (const img of (k.images as { name: string; newName?: string; newTag?: string }[] | undefined) ?? []) {
    for (const c of out.flatMap(containersOf)) {
      const [name, tag] = String(c.image).split(':');
      if (name === img.name) c.image = `${img.newName ?? name}${(img.newTag ?? tag) ? `:${img.newTag ?? tag}` : ''}`;
    }
  }
  if (typeof k.namespace === 'string') out = out.map((m) => ({ ...m, metadata: { ...m.metadata, namespace: k.namespace as string } }));
  const names = out.map((m) => `${m.kind}/${m.metadata.name}`);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new Error(`${dir}: ${twice} defined twice`);
  return out;
}
