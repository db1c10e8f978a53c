import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EnvSchema } from '../../src/config.js';

/*
 * `serverless package` (osls, offline: no AWS account, no credentials, no network),
 * then the compiled CloudFormation template read back: what `serverless deploy` would create.
 * The same command, with the same environment, is what an operator runs (docs/serverless.md).
 */

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const out = mkdtempSync(join(tmpdir(), 'gqe-sls-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

const BROKER = 'arn:aws:mq:eu-west-1:123456789012:broker:glance:b-0f3c2a1e-1111-2222-3333-444455556666';
const SECRET = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:gqe-mq-AbCdEf';

/** The parameters of docs/serverless.md's `serverless deploy`, with placeholders. */
const PARAMS = [`mqBrokerArn=${BROKER}`, `mqSecretArn=${SECRET}`, 'subnetIds=subnet-0a1b,subnet-0c2d', 'securityGroupIds=sg-0e3f'].map((p) => `--param=${p}`);

/** The deploy shell of docs/serverless.md, with placeholders; nothing that could reach AWS. */
const DEPLOY_ENV: Record<string, string> = {
  SLS_TELEMETRY_DISABLED: '1',
  SLS_NOTIFICATIONS_MODE: 'off',
  STORE_URL: 'rediss://:s3cret@gqe.abc123.euw1.cache.amazonaws.com:6379/0',
  OS_AUTH_URL: 'https://keystone.example.com:5000/v3',
  OS_USERNAME: 'glance-quota-enforcer',
  OS_PASSWORD: 'pw-from-the-deploy-shell',
  OS_PROJECT_NAME: 'admin',
  OS_SYSTEM_SCOPE: 'all',
  ENFORCEMENT_MODE: 'dry-run',
};

type Resource = { Type: string; Properties: Record<string, any>; DependsOn?: string[] };
let resources: Record<string, Resource>;
let outputs: Record<string, { Value: unknown }>;

beforeAll(async () => {
  for (const f of ['amazonmq', 'sqs', 'reconcile']) {
    if (!existsSync(join(ROOT, 'dist', 'functions', `${f}.js`))) {
      throw new Error(`dist/functions/${f}.js is missing: the package holds the build; run \`npm run build\` (npm ci runs it) first`);
    }
  }
  // A clean environment: no AWS credentials or profile of the machine's, no stray enforcer settings.
  const env: Record<string, string> = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? tmpdir(), ...DEPLOY_ENV };
  try {
    await run(process.execPath, [join(ROOT, 'node_modules', 'osls', 'bin', 'serverless.js'), 'package', '--stage', 'ci', '--region', 'eu-west-1', '--package', out, ...PARAMS], {
      cwd: ROOT,
      env,
      timeout: 150_000,
      maxBuffer: 16 * 1024 * 1024,
    });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`serverless package failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
  const template = JSON.parse(readFileSync(join(out, 'cloudformation-template-update-stack.json'), 'utf8'));
  resources = template.Resources;
  outputs = template.Outputs;
}, 180_000);

const ofType = (type: string) => Object.entries(resources).filter(([, r]) => r.Type === type);
const fn = (logicalId: string) => resources[logicalId]!.Properties;
const FUNCTIONS = { amazonmq: 'AmazonmqLambdaFunction', sqs: 'SqsLambdaFunction', reconcile: 'ReconcileLambdaFunction' } as const;
const ROLES = { amazonmq: 'AmazonMqFunctionRole', sqs: 'SqsFunctionRole', reconcile: 'ReconcileFunctionRole' } as const;

function statementsOf(role: string): { Effect: string; Action: string[] | string; Resource: unknown }[] {
  return resources[role]!.Properties.Policies.flatMap((p: any) => p.PolicyDocument.Statement);
}

describe('serverless package: the CloudFormation stack', () => {
  it('has the three functions on nodejs22.x, each from the build, in the VPC, with a role of its own', () => {
    expect(ofType('AWS::Lambda::Function').map(([id]) => id).sort()).toEqual(Object.values(FUNCTIONS).sort());
    for (const [name, id] of Object.entries(FUNCTIONS)) {
      const p = fn(id);
      expect(p).toMatchObject({ Runtime: 'nodejs22.x', Handler: `dist/functions/${name}.handler`, Role: { 'Fn::GetAtt': [ROLES[name as keyof typeof ROLES], 'Arn'] } });
      expect(p.VpcConfig).toEqual({ SubnetIds: { 'Fn::Split': [',', 'subnet-0a1b,subnet-0c2d'] }, SecurityGroupIds: { 'Fn::Split': [',', 'sg-0e3f'] } });
    }
    expect(fn(FUNCTIONS.reconcile)).toMatchObject({ Timeout: 900, ReservedConcurrentExecutions: 1 });
    // Serverless's shared default role is not made: each function has only its own permissions.
    expect(resources.IamRoleLambdaExecution).toBeUndefined();
  });

  it('maps the Amazon MQ queue to amazonmq, logging in with the secret', () => {
    const [[, mq]] = ofType('AWS::Lambda::EventSourceMapping').filter(([, r]) => r.Properties.EventSourceArn === BROKER) as [[string, Resource]];
    expect(mq.Properties).toEqual({
      FunctionName: { 'Fn::GetAtt': [FUNCTIONS.amazonmq, 'Arn'] },
      EventSourceArn: BROKER,
      Queues: ['glance-quota-enforcer'],
      SourceAccessConfigurations: [
        { Type: 'BASIC_AUTH', URI: SECRET },
        { Type: 'VIRTUAL_HOST', URI: '/' },
      ],
      BatchSize: 100,
    });
  });

  it('maps the notifications queue to sqs with ReportBatchItemFailures, and the queue redrives to a dead-letter queue', () => {
    const [[, sqs]] = ofType('AWS::Lambda::EventSourceMapping').filter(([, r]) => JSON.stringify(r.Properties.EventSourceArn).includes('NotificationsQueue')) as [[string, Resource]];
    expect(sqs.Properties).toMatchObject({
      FunctionName: { 'Fn::GetAtt': [FUNCTIONS.sqs, 'Arn'] },
      EventSourceArn: { 'Fn::GetAtt': ['NotificationsQueue', 'Arn'] },
      FunctionResponseTypes: ['ReportBatchItemFailures'],
      BatchSize: 10,
    });
    const queue = resources.NotificationsQueue!.Properties;
    expect(queue.RedrivePolicy).toEqual({ deadLetterTargetArn: { 'Fn::GetAtt': ['NotificationsDeadLetterQueue', 'Arn'] }, maxReceiveCount: 20 });
    // AWS's advice for a Lambda trigger: at least six times the function's timeout.
    expect(queue.VisibilityTimeout).toBeGreaterThanOrEqual(6 * fn(FUNCTIONS.sqs).Timeout);
    expect(resources.NotificationsDeadLetterQueue!.Properties.MessageRetentionPeriod).toBe(1_209_600);
    expect(outputs.NotificationsQueueUrl!.Value).toEqual({ Ref: 'NotificationsQueue' });
  });

  it('runs reconcile on the schedule, with no retry of its own (the next run resumes)', () => {
    const rules = ofType('AWS::Events::Rule');
    expect(rules).toHaveLength(1);
    expect(rules[0]![1].Properties).toMatchObject({ ScheduleExpression: 'rate(15 minutes)', State: 'ENABLED', Targets: [{ Arn: { 'Fn::GetAtt': [FUNCTIONS.reconcile, 'Arn'] } }] });
    expect(ofType('AWS::Lambda::EventInvokeConfig')[0]![1].Properties).toMatchObject({ FunctionName: { Ref: FUNCTIONS.reconcile }, MaximumRetryAttempts: 0 });
  });

  it("gives the functions the deploy shell's settings, only variables the enforcer knows, and the dead-letter queue to sqs", () => {
    const known = new Set([...Object.keys(EnvSchema.shape), 'NODE_OPTIONS', 'GLANCE_URL']);
    for (const [name, id] of Object.entries(FUNCTIONS)) {
      const vars: Record<string, unknown> = fn(id).Environment.Variables;
      expect(vars).toMatchObject({ STORE_URL: DEPLOY_ENV.STORE_URL, OS_AUTH_URL: DEPLOY_ENV.OS_AUTH_URL, OS_PASSWORD: DEPLOY_ENV.OS_PASSWORD, ENFORCEMENT_MODE: 'dry-run', QUOTA_LIMITS: '' });
      const unknown = Object.keys(vars).filter((v) => !known.has(v) && !v.startsWith('OS_'));
      expect(unknown, `${name}: variables no part of the enforcer reads`).toEqual([]);
      // The broker and the container's knobs are not the functions' business.
      for (const v of ['TRANSPORT_URL', 'QUEUE_NAME', 'METRICS_PORT', 'SQS_QUEUE_URL']) expect(vars[v]).toBeUndefined();
      expect(vars.SQS_DEAD_LETTER_QUEUE_URL).toEqual(name === 'sqs' ? { Ref: 'NotificationsDeadLetterQueue' } : undefined);
      expect(vars.RECONCILE_BUDGET_SECONDS).toEqual(name === 'reconcile' ? '600' : undefined);
    }
  });

  it('grants each role only what its function does', () => {
    const logs = (name: string) => ({
      Effect: 'Allow',
      Action: ['logs:CreateLogStream', 'logs:PutLogEvents'],
      Resource: { 'Fn::Sub': `arn:\${AWS::Partition}:logs:\${AWS::Region}:\${AWS::AccountId}:log-group:/aws/lambda/glance-quota-enforcer-ci-${name}:*` },
    });
    const eni = {
      Effect: 'Allow',
      Action: ['ec2:CreateNetworkInterface', 'ec2:DescribeNetworkInterfaces', 'ec2:DescribeSubnets', 'ec2:DeleteNetworkInterface', 'ec2:AssignPrivateIpAddresses', 'ec2:UnassignPrivateIpAddresses'],
      Resource: '*',
    };
    expect(statementsOf(ROLES.amazonmq)).toEqual([
      logs('amazonmq'),
      eni,
      { Effect: 'Allow', Action: ['mq:DescribeBroker'], Resource: BROKER },
      { Effect: 'Allow', Action: ['secretsmanager:GetSecretValue'], Resource: SECRET },
      { Effect: 'Allow', Action: ['ec2:DescribeVpcs', 'ec2:DescribeSecurityGroups'], Resource: '*' },
    ]);
    expect(statementsOf(ROLES.sqs)).toEqual([
      logs('sqs'),
      eni,
      { Effect: 'Allow', Action: ['sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes'], Resource: { 'Fn::GetAtt': ['NotificationsQueue', 'Arn'] } },
      { Effect: 'Allow', Action: ['sqs:SendMessage'], Resource: { 'Fn::GetAtt': ['NotificationsDeadLetterQueue', 'Arn'] } },
    ]);
    expect(statementsOf(ROLES.reconcile)).toEqual([logs('reconcile'), eni]);
    for (const role of Object.values(ROLES)) {
      expect(resources[role]!.Properties.AssumeRolePolicyDocument.Statement).toEqual([{ Effect: 'Allow', Principal: { Service: 'lambda.amazonaws.com' }, Action: 'sts:AssumeRole' }]);
      expect(resources[role]!.Properties.ManagedPolicyArns).toBeUndefined();
    }
    // No wildcard action anywhere, and '*' resources only for the EC2 actions that take no other.
    const all = [...Object.values(ROLES).flatMap(statementsOf), ...resources.BridgePolicy!.Properties.PolicyDocument.Statement];
    for (const s of all) {
      for (const a of [s.Action].flat()) expect(a).not.toMatch(/\*/);
      if (s.Resource === '*') for (const a of [s.Action].flat()) expect(a).toMatch(/^ec2:/);
    }
    // What the bridge's own identity may do: send to the notifications queue, nothing else.
    expect(resources.BridgePolicy!.Properties.PolicyDocument.Statement).toEqual([
      { Effect: 'Allow', Action: ['sqs:SendMessage'], Resource: { 'Fn::GetAtt': ['NotificationsQueue', 'Arn'] } },
    ]);
  });
});

describe('serverless package: the artifact', () => {
  let unpacked: string;
  beforeAll(async () => {
    const zips = readdirSync(out).filter((f) => f.endsWith('.zip'));
    expect(zips).toEqual(['glance-quota-enforcer.zip']);
    unpacked = join(out, 'unpacked');
    await run('python3', ['-m', 'zipfile', '-e', join(out, zips[0]!), unpacked]);
  }, 60_000);

  it('holds the build and the production dependencies, no sources, tests or development tools', () => {
    for (const f of ['package.json', 'dist/functions/amazonmq.js', 'dist/functions/sqs.js', 'dist/functions/reconcile.js', 'dist/src/enforcer.js', 'node_modules/zod', 'node_modules/ioredis', 'node_modules/pg']) {
      expect(existsSync(join(unpacked, f)), f).toBe(true);
    }
    for (const f of ['src', 'test', 'functions', 'serverless.yml', 'node_modules/vitest', 'node_modules/serverless', 'node_modules/osls', 'node_modules/typescript', 'node_modules/better-sqlite3/deps', 'data']) {
      expect(existsSync(join(unpacked, f)), f).toBe(false);
    }
  });

  it("loads each handler from the unpacked artifact, as Lambda's nodejs22.x runtime does", async () => {
    const probe = `
      const names = ['amazonmq', 'sqs', 'reconcile'];
      const kinds = [];
      for (const n of names) kinds.push(typeof (await import('./dist/functions/' + n + '.js')).handler);
      const { handler } = await import('./dist/functions/sqs.js');
      const refused = await handler({ Records: [] }).then(() => 'ran', (e) => e.message);
      console.log(JSON.stringify({ kinds, refused }));`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', probe], {
      cwd: unpacked,
      env: { PATH: process.env.PATH ?? '', STORE_URL: 'sqlite:///tmp/gqe-lambda.db', LOG_LEVEL: 'silent' },
    });
    const result = JSON.parse(stdout.trim().split('\n').at(-1)!);
    expect(result.kinds).toEqual(['function', 'function', 'function']);
    expect(result.refused).toMatch(/^STORE_URL: a function needs a ledger that all its instances share/);
  });
});
