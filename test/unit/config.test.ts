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
