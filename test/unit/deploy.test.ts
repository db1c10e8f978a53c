import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { startHealthServer } from '../../src/health.js';
import { Metrics } from '../../src/metrics.js';
import { kustomizeBuild, type Manifest } from '../support/kustomize.js';
import { exportedSeries, metricNames, SCRAPE_SERIES } from '../support/promql.js';

const ROOT = join(import.meta.dirname, '..', '..');
const KUBE = join(ROOT, 'deploy', 'kubernetes');
const OVERLAYS = readdirSync(join(KUBE, 'overlays'));

/** The schema of each kind, from kubernetes-models (Kubernetes' OpenAPI) and prometheus-operator's CRDs. */
async function validate(m: Manifest): Promise<void> {
  const [group, version] = m.apiVersion.includes('/') ? m.apiVersion.split('/') : ['', m.apiVersion];
  const module =
    group === 'monitoring.coreos.com'
      ? `@kubernetes-models/prometheus-operator/${group}/${version}/${m.kind}`
      : `kubernetes-models/${group ? `${group}/` : ''}${version}/${m.kind}`;
  const Model = (await import(module))[m.kind] as new (data: unknown) => { validate(): void };
  new Model(m).validate();
}

function deploymentOf(manifests: Manifest[]) {
  const d = manifests.find((m) => m.kind === 'Deployment') as any;
  return { deployment: d, pod: d.spec.template.spec, container: d.spec.template.spec.containers[0] };
}

describe.each(OVERLAYS)('deploy/kubernetes/overlays/%s', (overlay) => {
  const manifests = kustomizeBuild(join(KUBE, 'overlays', overlay));

  it('renders objects that are valid against the Kubernetes and prometheus-operator schemas', async () => {
    expect(manifests.map((m) => m.kind).sort()).toEqual(
      expect.arrayContaining(['ConfigMap', 'Deployment', 'PrometheusRule', 'Secret', 'Service', 'ServiceMonitor']),
    );
    for (const m of manifests) await expect(validate(m), `${m.kind}/${m.metadata.name}`).resolves.toBeUndefined();
  });

  it('probes paths the health server answers, on the port the enforcer listens on', async () => {
    const { container } = deploymentOf(manifests);
    const config = manifests.find((m) => m.kind === 'ConfigMap' && m.metadata.name === 'glance-quota-enforcer-env') as any;
    const port = container.ports.find((p: any) => p.name === 'metrics').containerPort;
    expect(port).toBe(loadConfig({}).metricsPort);
    expect(Number(config.data.METRICS_PORT)).toBe(port);
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'metrics' });
    const service = manifests.find((m) => m.kind === 'Service') as any;
    expect(service.spec.ports[0]).toMatchObject({ port, targetPort: 'metrics' });
    const monitor = manifests.find((m) => m.kind === 'ServiceMonitor') as any;
    expect(monitor.spec.endpoints[0]).toMatchObject({ port: 'metrics', path: '/metrics' });

    // The same paths on the real health server: 200 while ready, 503 (not 404) when not.
    let ready = true;
    const health = await startHealthServer({ port: 0, host: '127.0.0.1' }, new Metrics(), { ready: async () => ({ ok: ready, detail: {} }) });
    try {
      const base = `http://127.0.0.1:${(health.server.address() as AddressInfo).port}`;
      for (const path of [container.livenessProbe.httpGet.path, container.readinessProbe.httpGet.path, monitor.spec.endpoints[0].path]) {
        expect((await fetch(base + path)).status, path).toBe(200);
      }
      ready = false;
      expect((await fetch(base + container.readinessProbe.httpGet.path)).status).toBe(503);
      expect((await fetch(base + container.livenessProbe.httpGet.path)).status).toBe(200);
    } finally {
      health.server.close();
    }
  });

  it("runs as the image's non-root user, with requests, the clouds.yaml Secret and the broker secret", () => {
    const { pod, container } = deploymentOf(manifests);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000 });
    expect(container.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true });
    expect(container.resources.requests).toEqual({ cpu: expect.any(String), memory: expect.any(String) });
    expect(container.args).toEqual(['consume']);
    const clouds = pod.volumes.find((v: any) => v.secret?.items?.some((i: any) => i.key === 'clouds.yaml'));
    expect(container.volumeMounts.find((m: any) => m.name === clouds.name).mountPath).toBe('/etc/openstack');
    const secret = manifests.find((m) => m.kind === 'Secret' && m.metadata.name === clouds.secret.secretName) as any;
    expect(Object.keys(secret.stringData)).toEqual(expect.arrayContaining(['clouds.yaml', 'TRANSPORT_URL']));
    expect(container.env.find((e: any) => e.name === 'TRANSPORT_URL').valueFrom.secretKeyRef).toEqual({ name: secret.metadata.name, key: 'TRANSPORT_URL' });
  });

  it('alerts only on metrics the enforcer exports', async () => {
    const rules = (manifests.find((m) => m.kind === 'PrometheusRule') as any).spec.groups.flatMap((g: any) => g.rules);
    const exported = await exportedSeries();
    const used = rules.flatMap((r: any) => metricNames(String(r.expr)));
    expect(used).toContain('gqe_projects_over_limit');
    expect(used.filter((n: string) => !exported.has(n) && !SCRAPE_SERIES.has(n))).toEqual([]);
    expect(rules.map((r: any) => r.alert)).toEqual(
      expect.arrayContaining([
        'GlanceQuotaEnforcerBrokerDisconnected',
        'GlanceQuotaEnforcerStoreErrors',
        'GlanceQuotaEnforcerDeadLettersGrowing',
        'GlanceQuotaEnforcerEnforcementStuck',
        'GlanceQuotaEnforcerLedgerCorrections',
        'GlanceQuotaEnforcerNoReconcile',
        'GlanceQuotaEnforcerProjectsOverLimit',
      ]),
    );
    expect(rules.every((r: any) => r.labels?.severity && r.annotations?.summary)).toBe(true);
  });
});

describe('the two ledgers', () => {
  it('sqlite: exactly one replica, never two at once, its file on a claimed volume', () => {
    const manifests = kustomizeBuild(join(KUBE, 'overlays', 'sqlite'));
    const { deployment, pod, container } = deploymentOf(manifests);
    expect(deployment.spec.replicas).toBe(1);
    expect(deployment.spec.strategy).toEqual({ type: 'Recreate' });
    const store = container.env.find((e: any) => e.name === 'STORE_URL').value as string;
    const mount = container.volumeMounts.find((m: any) => store.startsWith(`sqlite://${m.mountPath}/`));
    expect(pod.volumes.find((v: any) => v.name === mount.name).persistentVolumeClaim.claimName).toBe(
      manifests.find((m) => m.kind === 'PersistentVolumeClaim')!.metadata.name,
    );
  });

  it('shared-store: two or more replicas on a PostgreSQL or Redis ledger from a Secret', () => {
    const manifests = kustomizeBuild(join(KUBE, 'overlays', 'shared-store'));
    const { deployment, container } = deploymentOf(manifests);
    expect(deployment.spec.replicas).toBeGreaterThanOrEqual(2);
    const ref = container.env.find((e: any) => e.name === 'STORE_URL').valueFrom.secretKeyRef;
    const secret = manifests.find((m) => m.kind === 'Secret' && m.metadata.name === ref.name) as any;
    expect(secret.stringData[ref.key]).toMatch(/^(postgres|redis|rediss):\/\//);
    expect(manifests.some((m) => m.kind === 'PersistentVolumeClaim')).toBe(false);
  });
});

describe('deploy/systemd/glance-quota-enforcer.service', () => {
  const path = join(ROOT, 'deploy', 'systemd', 'glance-quota-enforcer.service');
  const unit = readFileSync(path, 'utf8');
  const settings = (key: string) => [...unit.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!);

  it('runs node on the bin directly (npx would leave its child on SIGTERM), as an unprivileged hardened user', () => {
    expect(settings('ExecStart')).toEqual(['/usr/bin/node /opt/glance-quota-enforcer/bin/glance-quota-enforcer.js consume']);
    expect(settings('DynamicUser')).toEqual(['yes']);
    expect(settings('ProtectSystem')).toEqual(['strict']);
    expect(settings('EnvironmentFile')).toEqual(['/etc/glance-quota-enforcer/enforcer.env']);
    expect(settings('MemoryDenyWriteExecute')).toEqual([]); // V8's JIT
  });

  it('keeps the SQLite ledger in its StateDirectory, the one place ProtectSystem=strict lets it write', () => {
    const [state] = settings('StateDirectory');
    expect(settings('Environment')).toContain(`STORE_URL=sqlite:///var/lib/${state}/glance-quota.db`);
  });

  it('is a unit systemd accepts (systemd-analyze verify)', () => {
    // verify also checks that the command exists: point it at this test's node, wherever it is.
    const copy = join(mkdtempSync(join(tmpdir(), 'gqe-unit-')), 'glance-quota-enforcer.service');
    writeFileSync(copy, unit.replace('ExecStart=/usr/bin/node ', `ExecStart=${process.execPath} `));
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', copy], { encoding: 'utf8', timeout: 30_000 });
    if (r.error) throw new Error(`systemd-analyze: ${r.error.message}; apt-get install systemd`);
    expect((r.stdout + r.stderr).split('\n').filter((l) => l.includes('glance-quota-enforcer.service'))).toEqual([]);
  });
});

describe('Dockerfile', () => {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));

  it('runs node on the bin as PID 1, as the non-root node user, consume by default, from the official Node 22 slim base', () => {
    expect(dockerfile).toMatch(/^ARG BASE_IMAGE=docker\.io\/library\/node:22-slim$/m);
    expect(runtime).toMatch(/^ENTRYPOINT \["node", "bin\/glance-quota-enforcer\.js"\]$/m);
    expect(runtime).toMatch(/^CMD \["consume"\]$/m);
    expect(runtime).toMatch(/^USER node$/m);
  });

  it('exposes the port the enforcer listens on and keeps the SQLite ledger on the volume', () => {
    expect(runtime).toMatch(new RegExp(`^EXPOSE ${loadConfig({}).metricsPort}$`, 'm'));
    expect(runtime).toMatch(/^VOLUME \/data$/m);
    expect(runtime).toMatch(/STORE_URL=sqlite:\/\/\/data\//);
  });

  it('compiles with every type package the project declares (the build stage installs them by name)', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> };
    const tools = /const tools = \[([^\]]*)\]/.exec(dockerfile)![1]!;
    const named = [...tools.matchAll(/'([^']+)'/g)].map((m) => m[1]);
    const needed = ['typescript', ...Object.keys(pkg.devDependencies).filter((d) => d.startsWith('@types/'))];
    expect(needed.filter((d) => !named.includes(d))).toEqual([]);
  });
});
