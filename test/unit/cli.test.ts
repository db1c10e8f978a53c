import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli as run } from '../support/cli.js';
import { keystoneStandIn, projectLimit, registeredLimit } from '../support/keystone-standin.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { captures, envelope, inner, quotaTestBodies, rawBody } from '../support/fixtures.js';

const dir = mkdtempSync(join(tmpdir(), 'gqe-cli-'));
function file(name: string, lines: string[]): string {
  const path = join(dir, name);
  writeFileSync(path, lines.join('\n') + '\n');
  return path;
}

/** The i-th flood image of a project: a UUID, as Glance makes image ids, that names both. */
function imageId(project: string, i: number): string {
  return `${project.padEnd(8, '0')}-0000-4000-8000-${String(i).padStart(12, '0')}`;
}

/** Five queued images of one project, created a second apart, the way a flood looks. */
function flood(project = 'aaaa', count = 5): string[] {
  const template = inner(rawBody('image.create'));
  return Array.from({ length: count }, (_, i) => {
    const t = `2026-11-26T20:30:0${i}Z`;
    return envelope({
      ...template,
      message_id: `msg-${project}-${i}`,
      timestamp: `2026-11-26 20:30:0${i}.000100`,
      payload: { ...template.payload, id: imageId(project, i), owner: project, created_at: t, updated_at: t },
    });
  });
}

describe('replay FILE --json', () => {
  it('prints exactly one JSON document in the documented shape', async () => {
    const path = file(
      'lab.jsonl',
      captures().map((c) => c.body),
    );
    const { code, stdout } = await run(['replay', path, '--json']);
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toEqual({
      messages: { total: 36, applied: 27, duplicate: 0, ignored: 9, invalid: 0 },
      // Every project the file names is decided, as every door does, even when its images are all gone.
      projects: [
        {
          project_id: '615696c542784834ac46630e5a22dbe3',
          usage: { image_count_total: 0, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 },
          over: [],
          to_delete: [],
        },
      ],
    });
  });

  it('counts duplicates and invalid lines, reports each bad line on stderr, and goes on', async () => {
    const bodies = flood();
    const path = file('mixed.jsonl', [bodies[0]!, 'not json', bodies[1]!, bodies[0]!, '', '{"oslo.version":"2.0"}', bodies[2]!]);
    const { code, stdout, stderr } = await run(['replay', path, '--json']);
    expect(code).toBe(0);
    expect(JSON.parse(stdout).messages).toEqual({ total: 6, applied: 3, duplicate: 1, ignored: 0, invalid: 2 });
    expect(stderr).toMatch(new RegExp(`${path}:2: invalid: body is not JSON`));
    expect(stderr).toMatch(new RegExp(`${path}:6: invalid: oslo message`));
    expect(JSON.parse(stdout).projects[0].usage.image_count_total).toBe(3);
  });

  it('lists the newest queued images past --limit, for every project, sorted by project id', async () => {
    const path = file('flood.jsonl', [...flood('bbbb'), ...flood('aaaa', 2)]);
    const { stdout } = await run(['replay', path, '--json', '--limit', 'image_count_total=2']);
    const doc = JSON.parse(stdout);
    expect(doc.projects.map((p: { project_id: string }) => p.project_id)).toEqual(['aaaa', 'bbbb']);
    expect(doc.projects[0]).toMatchObject({ over: [], to_delete: [] });
    expect(doc.projects[1]).toMatchObject({ over: ['image_count_total'], to_delete: [imageId('bbbb', 4), imageId('bbbb', 3), imageId('bbbb', 2)] });
  });

  it('lets --limit win over QUOTA_LIMITS, and respects EXEMPT_PROJECTS', async () => {
    const path = file('flood2.jsonl', flood('bbbb'));
    const tight = await run(['replay', path, '--json', '--limit', 'image_count_total=4'], { QUOTA_LIMITS: 'image_count_total=1' });
    expect(JSON.parse(tight.stdout).projects[0].to_delete).toEqual([imageId('bbbb', 4)]);
    const exempt = await run(['replay', path, '--json', '--limit', 'image_count_total=1'], { EXEMPT_PROJECTS: 'zzz, bbbb' });
    expect(JSON.parse(exempt.stdout).projects[0]).toMatchObject({ over: ['image_count_total'], to_delete: [] });
  });

  it("deletes exactly the image Glance's own quota refused with 413 in the lab (limit 3, 4th create)", async () => {
    // Created in the same second as the third: the larger id goes first, as Glance's listing sorts.
    const FOURTH = 'ffffffff-0000-4000-8000-000000000004';
    const accepted = quotaTestBodies();
    const third = inner(accepted[2]!);
    const fourth = envelope({
      ...third,
      message_id: 'fourth',
      timestamp: third.timestamp.replace(/:(\d\d)\./, (_: string, s: string) => `:${String(Number(s) + 1).padStart(2, '0')}.`),
      payload: { ...third.payload, id: FOURTH },
    });
    const path = file('quota.jsonl', [...accepted, fourth]);
    const { stdout } = await run(['replay', path, '--json', '--limit', 'image_count_total=3']);
    const [attacker] = JSON.parse(stdout).projects;
    expect(attacker).toMatchObject({ project_id: third.payload.owner, over: ['image_count_total'], to_delete: [FOURTH] });
    expect(attacker.usage.image_count_total).toBe(4);
  });

  it('prints a readable table without --json', async () => {
    const path = file('table.jsonl', flood('cccc'));
    const { stdout } = await run(['replay', path, '--limit', 'image_count_total=3']);
    expect(stdout).toMatch(/messages: 5 total, 5 applied, 0 duplicate, 0 ignored, 0 invalid/);
    expect(stdout).toMatch(/cccc\s+5\s+0\s+0\s+0\s+image_count_total\s+2/);
    expect(stdout).toMatch(/cccc would delete \(newest first\): cccc0000-0000-4000-8000-000000000004 cccc0000-0000-4000-8000-000000000003/);
  });
});

describe('forged ids on a terminal', () => {
  /** Raw control characters a terminal would act on: ESC, BEL, CSI (C1), a bidi override. */
  const RAW_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e]/;
  const EVIL_PROJECT = 'p\u001b[2J\u001b]0;owned\u0007';
  const EVIL_IMAGE = 'img\u009b31m\u202eexe.jpg';

  it('replay, status and actions print them escaped, never raw', async () => {
    const db = join(dir, 'forged.db');
    const store = SqliteStore.open(db);
    const base = { over: [], usage: { image_count_total: 2, image_count_uploading: 0, image_size_total: 0, image_stage_total: 0 }, limits: {} };
    await store.recordActions([
      { ...base, atMs: 1, projectId: EVIL_PROJECT, imageId: EVIL_IMAGE, action: 'skipped', reason: 'status is \u001b[31mactive\nfake line' },
    ]);
    await store.close();
    const actions = await run(['actions'], { STORE_URL: `sqlite://${db}` });
    expect(actions.code).toBe(0);
    expect(actions.stdout).not.toMatch(RAW_CONTROL);
    expect(actions.stdout).toContain('p\\x1b[2J\\x1b]0;owned\\x07  img\\x9b31m\\u202eexe.jpg  skipped: status is \\x1b[31mactive\\x0afake line');
    // One record, one line: a newline in a reason cannot fake another.
    expect(actions.stdout.trimEnd().split('\n')).toHaveLength(1);

    // A notification with the forged owner, replayed and then asked about.
    const template = inner(rawBody('image.create'));
    const forged = envelope({ ...template, payload: { ...template.payload, owner: EVIL_PROJECT, id: EVIL_IMAGE } });
    const replay = await run(['replay', file('forged.jsonl', [forged]), '--limit', 'image_count_total=0']);
    expect(replay.code).toBe(0);
    expect(replay.stdout + replay.stderr).not.toMatch(RAW_CONTROL);
    const status = await run(['status', '--project', EVIL_PROJECT], { STORE_URL: `sqlite://${db}` });
    expect(status.code).toBe(0);
    expect(status.stdout).not.toMatch(RAW_CONTROL);
    expect(status.stdout).toContain('p\\x1b[2J');
  });
});

describe('status: the projects nearest their limits first', () => {
  it("orders over, then fullest, then unlimited-looking projects, with Keystone's names, as a table and as JSON", async () => {
    const store = `sqlite://${join(dir, 'nearest.db')}`;
    // aaaa 5 of 10 (50%), bbbb 3 of 2 (over), cccc 1 of 10, dddd 4 of 10 and gone from Keystone.
    const bodies = [...flood('aaaa', 5), ...flood('bbbb', 3), ...flood('cccc', 1), ...flood('dddd', 4)];
    expect((await run(['replay', file('nearest.jsonl', bodies), '--store', store])).code).toBe(0);
    const keystone = await keystoneStandIn({
      registered: [registeredLimit('image_count_total', 10)],
      limits: [projectLimit('bbbb', 'image_count_total', 2)],
      projects: [
        { id: 'aaaa', name: 'web' },
        { id: 'bbbb', name: 'ci-\u001b[31mrunner' },
        { id: 'cccc', name: 'data' },
      ],
    });
    try {
      const env = { ...(keystone.env as Record<string, string>), OS_PROJECT_NAME: 'service', OS_PROJECT_DOMAIN_NAME: 'Default', STORE_URL: store };
      const text = await run(['status'], env);
      expect(text.code).toBe(0);
      expect(text.stderr).toBe('');
      expect(
        text.stdout
          .trimEnd()
          .split('\n')
          .slice(1)
          .map((l) => l.split(/\s{2,}/).slice(0, 4)),
      ).toEqual([
        ['bbbb', 'ci-\\x1b[31mrunner', '150%', '3/2'],
        ['aaaa', 'web', '50%', '5/10'],
        ['dddd', '-', '40%', '4/10'],
        ['cccc', 'data', '10%', '1/10'],
      ]);
      const json = JSON.parse((await run(['status', '--json'], env)).stdout);
      expect(
        json.projects.map((p: { project_id: string; project_name: string | null; fullness: number | null }) => [p.project_id, p.project_name, p.fullness]),
      ).toEqual([
        ['bbbb', 'ci-\u001b[31mrunner', 1.5],
        ['aaaa', 'web', 0.5],
        ['dddd', null, 0.4],
        ['cccc', 'data', 0.1],
      ]);
      expect(json.projects[0]).toMatchObject({ usage: { image_count_total: 3 }, limits: { image_count_total: 2 }, over: ['image_count_total'] });
      // Four projects: each read by id (a project Keystone no longer has is a 404, not an error).
      expect(keystone.projectCalls).toEqual({ listings: 0, byId: 8 });
    } finally {
      await keystone.close();
    }
  });
});

describe('status in a shell without a system scope', () => {
  it("still prints the ledger's usage, with the static limits, and says what it cannot read", async () => {
    const store = `sqlite://${join(dir, 'status.db')}`;
    expect((await run(['replay', file('status.jsonl', flood('cccc')), '--store', store])).code).toBe(0);
    const identity = {
      OS_AUTH_URL: 'http://127.0.0.1:9/v3',
      OS_USERNAME: 'enforcer',
      OS_PASSWORD: 'enforcer-pass',
      OS_USER_DOMAIN_NAME: 'Default',
      OS_PROJECT_NAME: 'service',
      OS_PROJECT_DOMAIN_NAME: 'Default',
      STORE_URL: store,
      QUOTA_LIMITS: 'image_count_total=3',
    };
    const { code, stdout, stderr } = await run(['status'], identity);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^cccc\s+-\s+167%\s+5\/3\s+0\/-\s+0\/-\s+0\/-\s+image_count_total$/m);
    expect(stderr).toContain('warning: project names unavailable from Keystone');
    expect(stderr).toContain('warning: unified limits: no system-scoped token: OS_SYSTEM_SCOPE is not set');
    expect(stderr).toContain('showing QUOTA_LIMITS / QUOTA_LIMITS_FILE limits only');
    expect(stderr).not.toContain('enforcer-pass');
  });

  it('is still an error for a command that acts (reconcile)', async () => {
    const { code, stderr } = await run(['reconcile', '--dry-run'], {
      OS_AUTH_URL: 'http://127.0.0.1:9/v3',
      OS_USERNAME: 'enforcer',
      OS_PASSWORD: 'enforcer-pass',
      OS_USER_DOMAIN_NAME: 'Default',
      OS_PROJECT_NAME: 'service',
      OS_PROJECT_DOMAIN_NAME: 'Default',
      STORE_URL: 'memory://',
    });
    expect(code).not.toBe(0);
    expect(stderr).toContain('OS_SYSTEM_SCOPE is not set');
  });
});

describe('errors a person can act on', () => {
  it.each([
    [['replay'], {}, /expected exactly one FILE/],
    [['replay', '/nonexistent/file.jsonl'], {}, /ENOENT.*\/nonexistent\/file\.jsonl/],
    [['replay', join(dir, 'x'), '--limit', 'image_count_total=lots'], {}, /--limit: image_count_total must be a whole number/],
    [['replay', join(dir, 'x')], { ENFORCEMENT_MODE: 'yes' }, /ENFORCEMENT_MODE: .*got 'yes'; for example ENFORCEMENT_MODE=dry-run/],
    [['replay', join(dir, 'x')], { QUOTA_LIMITS: 'count=3' }, /QUOTA_LIMITS: unknown resource 'count'/],
    [['replay', join(dir, 'x'), '--store', 'mysql://u:secret@db/x'], {}, /STORE_URL: unsupported store 'mysql:\/\/u:\*\*\*@db\/x'/],
    [['frobnicate'], {}, /unknown command 'frobnicate'/],
    [
      ['gate'],
      {
        STORE_URL: 'memory://',
        OS_AUTH_URL: 'http://127.0.0.1:9/v3',
        OS_USERNAME: 'enforcer',
        OS_PASSWORD: 'secret',
        OS_PROJECT_NAME: 'service',
        OS_SYSTEM_SCOPE: 'all',
      },
      /STORE_URL: gate reads the ledger that consume keeps; memory:\/\/ holds nothing here/,
    ],
    [['gate'], { ADMISSION_FAIL: 'maybe' }, /ADMISSION_FAIL: .*got 'maybe'; for example ADMISSION_FAIL=closed/],
    [['gate'], { STORE_URL: 'memory://', ADMISSION_PORT: '70000' }, /ADMISSION_PORT: .*got '70000'; for example ADMISSION_PORT=10921/],
  ])('%j exits non-zero with a clear message', async (args, env, message) => {
    writeFileSync(join(dir, 'x'), '');
    const { code, stderr } = await run(args as string[], env as Record<string, string>);
    expect(code).not.toBe(0);
    expect(stderr).toMatch(message);
    expect(stderr).not.toMatch(/secret|\n\s+at /);
  });
});

describe('the installed bin', () => {
  const bin = join(import.meta.dirname, '..', '..', 'bin', 'glance-quota-enforcer.js');
  it('answers --help from the built output (npm ci builds it)', () => {
    if (!existsSync(join(import.meta.dirname, '..', '..', 'dist', 'src', 'cli.js'))) {
      throw new Error('dist/ is missing: run `npm ci` or `npm run build` first');
    }
    expect(execFileSync(process.execPath, [bin, '--help'], { encoding: 'utf8' })).toMatch(/glance-quota-enforcer replay FILE/);
    const bad = spawnSync(process.execPath, [bin, 'nope'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
  });
});
