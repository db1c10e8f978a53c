import { readFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { envTable, withEnvTable } from '../../src/config-doc.js';

describe('configuration from the environment', () => {
  it('has defaults an operator can start with', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({ storeUrl: 'sqlite://./data/glance-quota.db', mode: 'enforce', logLevel: 'info', messageRetentionMs: 604_800_000 });
    expect(c.limits).toEqual({ defaults: {}, perProject: {} });
  });

  it('reads limits, per-project overrides and exempt projects', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gqe-config-'));
    const file = join(dir, 'limits.json');
    writeFileSync(file, JSON.stringify({ p1: { image_count_total: 10, image_create_rate: '5/1m' } }));
    const c = loadConfig({ QUOTA_LIMITS: 'image_count_total=100', QUOTA_LIMITS_FILE: file, EXEMPT_PROJECTS: ' a, b ,,', ENFORCEMENT_MODE: 'dry-run' });
    expect(c.limits.defaults).toEqual({ image_count_total: 100 });
    expect(c.limits.perProject).toEqual({ p1: { image_count_total: 10, image_create_rate: { count: 5, windowSeconds: 60 } } });
    expect([...c.exemptProjects]).toEqual(['a', 'b']);
    expect(c.mode).toBe('dry-run');
  });

  it.each([
    [{ MESSAGE_RETENTION_SECONDS: '-5' }, /MESSAGE_RETENTION_SECONDS: .*got '-5'; for example MESSAGE_RETENTION_SECONDS=604800/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL: .*got 'loud'/],
    [{ QUOTA_LIMITS_FILE: '/nonexistent.json' }, /QUOTA_LIMITS_FILE: cannot read '\/nonexistent\.json'/],
  ])('names the variable and the fix for %j', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });

  it("listens off node_exporter's 9100, on every interface unless METRICS_HOST narrows it", () => {
    expect(loadConfig({})).toMatchObject({ metricsPort: 10920, metricsHost: '0.0.0.0' });
    expect(loadConfig({ METRICS_HOST: '10.0.0.5', METRICS_PORT: '9901' })).toMatchObject({ metricsPort: 9901, metricsHost: '10.0.0.5' });
    expect(loadConfig({ METRICS_HOST: '::' }).metricsHost).toBe('::');
    expect(() => loadConfig({ METRICS_HOST: 'mgmt-net' })).toThrow(/METRICS_HOST: expected an IP address .*got 'mgmt-net'; for example METRICS_HOST=127.0.0.1/);
  });

  it('names both settings when the metrics port is taken', async () => {
    const { createServer } = await import('node:net');
    const { startHealthServer } = await import('../../src/health.js');
    const { Metrics } = await import('../../src/metrics.js');
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
    const port = (holder.address() as { port: number }).port;
    try {
      await expect(startHealthServer({ port, host: '127.0.0.1' }, new Metrics(), { ready: async () => ({ ok: true, detail: {} }) })).rejects.toThrow(
        `METRICS_HOST/METRICS_PORT: listening on 127.0.0.1:${port} is already in use; set METRICS_PORT to a free port`,
      );
    } finally {
      holder.close();
    }
  });

  it('rejects an unknown resource in QUOTA_LIMITS_FILE, naming the project', () => {
    const dir = mkdtempSync(join(tmpdir(), 'gqe-config-'));
    const file = join(dir, 'limits.json');
    writeFileSync(file, JSON.stringify({ p1: { images: 3 } }));
    expect(() => loadConfig({ QUOTA_LIMITS_FILE: file })).toThrow(/QUOTA_LIMITS_FILE: .* at p1: .*images/);
  });

  it('is documented in README.md exactly as the schema says (npm run docs:env)', () => {
    const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');
    expect(readme).toContain(envTable());
    expect(withEnvTable(readme)).toBe(readme);
  });
});
