import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { GetParameterCommand, SSMClient } from '@aws-sdk/client-ssm';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { openFunctionServices } from '../../src/doors/lambda/instance.js';
import { awsSecretReader, resolveSecrets } from '../../src/doors/lambda/secrets.js';
import { freshLedgerPerTest } from './support.js';

/*
 * The deployment of docs/serverless.md, the secure way: the function's environment holds only
 * ARNs, and the cold start reads the values from Secrets Manager or SSM Parameter Store (played
 * by aws-sdk-client-mock: no AWS is reached).
 */

const PASSWORD_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:gqe-os-password-AbCdEf';
const STORE_ARN = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:gqe-store-url-12AbCd';
const APP_SECRET_ARN = 'arn:aws:ssm:eu-west-1:123456789012:parameter/gqe/app-credential-secret';
const PASSWORD = 'pw-Fr0m-Secrets-Manager-9d2e';

const secretsManager = mockClient(SecretsManagerClient);
const ssm = mockClient(SSMClient);
afterEach(() => {
  secretsManager.reset();
  ssm.reset();
});
afterAll(() => {
  secretsManager.restore();
  ssm.restore();
});

const secretIds = () => secretsManager.commandCalls(GetSecretValueCommand).map((c) => c.args[0].input.SecretId);

describe('secrets named by <SETTING>_SECRET_ARN', () => {
  it('are read from Secrets Manager and SSM (decrypted) by their ARN, and lose a trailing newline', async () => {
    secretsManager.on(GetSecretValueCommand, { SecretId: PASSWORD_ARN }).resolves({ SecretString: `${PASSWORD}\n` });
    ssm.on(GetParameterCommand, { Name: APP_SECRET_ARN, WithDecryption: true }).resolves({ Parameter: { Value: 'app-cred-secret' } });
    const env = await resolveSecrets(
      { OS_PASSWORD_SECRET_ARN: PASSWORD_ARN, OS_APPLICATION_CREDENTIAL_SECRET_ARN: APP_SECRET_ARN, OS_USERNAME: 'gqe' },
      awsSecretReader(),
    );
    expect(env).toMatchObject({ OS_PASSWORD: PASSWORD, OS_APPLICATION_CREDENTIAL_SECRET: 'app-cred-secret', OS_USERNAME: 'gqe' });
    expect(secretIds()).toEqual([PASSWORD_ARN]);
    expect(ssm.commandCalls(GetParameterCommand)).toHaveLength(1);
  });

  it('are asked for once per instance, even when the cold start is tried again; a failed read is asked again', async () => {
    secretsManager
      .on(GetSecretValueCommand)
      .rejectsOnce(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }))
      .resolves({ SecretString: PASSWORD });
    const reader = awsSecretReader();
    const env = { OS_PASSWORD_SECRET_ARN: PASSWORD_ARN };
    await expect(resolveSecrets(env, reader)).rejects.toThrow(/ThrottlingException/);
    for (let i = 0; i < 3; i++) expect((await resolveSecrets(env, reader)).OS_PASSWORD).toBe(PASSWORD);
    expect(secretIds()).toEqual([PASSWORD_ARN, PASSWORD_ARN]);
  });

  it('change nothing, and load no AWS SDK client, when no ARN is set: plain values work as in the container', async () => {
    const env = { OS_PASSWORD: 'plain', STORE_URL: 'redis://cache:6379/0', OS_PASSWORD_SECRET_ARN: '' };
    expect(
      await resolveSecrets(env, { secretsManager: () => Promise.reject(new Error('asked')), parameterStore: () => Promise.reject(new Error('asked')) }),
    ).toBe(env);
  });

  it('refuse a setting given both as a value and as an ARN, asking AWS nothing', async () => {
    await expect(resolveSecrets({ OS_PASSWORD: 'plain', OS_PASSWORD_SECRET_ARN: PASSWORD_ARN }, awsSecretReader())).rejects.toThrow(
      /^OS_PASSWORD: given both as a value and as OS_PASSWORD_SECRET_ARN; unset OS_PASSWORD/,
    );
    expect(secretIds()).toEqual([]);
  });

  it('say which variable, which ARN and which permission when the role may not read it, never a value', async () => {
    secretsManager
      .on(GetSecretValueCommand)
      .rejects(
        Object.assign(
          new Error(
            `User: arn:aws:sts::123456789012:assumed-role/gqe-sqs is not authorized to perform: secretsmanager:GetSecretValue on resource: ${STORE_ARN}`,
          ),
          { name: 'AccessDeniedException' },
        ),
      );
    const error = await resolveSecrets({ STORE_URL_SECRET_ARN: STORE_ARN }, awsSecretReader()).catch((e: Error) => e);
    expect(error).toMatchObject({ name: 'ConfigError' });
    expect((error as Error).message).toMatch(
      new RegExp(
        `^STORE_URL_SECRET_ARN: cannot read ${STORE_ARN} \\(AccessDeniedException: .*\\); check that it exists and that the function's role allows secretsmanager:GetSecretValue on it$`,
      ),
    );

    secretsManager.on(GetSecretValueCommand).resolves({ SecretString: '\n' });
    await expect(resolveSecrets({ STORE_URL_SECRET_ARN: STORE_ARN }, awsSecretReader())).rejects.toThrow(
      `STORE_URL_SECRET_ARN: ${STORE_ARN} is empty; put the STORE_URL value in it`,
    );
    secretsManager.on(GetSecretValueCommand).resolves({ SecretBinary: new Uint8Array([1, 2]) });
    await expect(resolveSecrets({ STORE_URL_SECRET_ARN: STORE_ARN }, awsSecretReader())).rejects.toThrow(/the secret holds binary data, not a string/);
  });

  it.each([
    ['a secret name', 'gqe-os-password'],
    ['a parameter name', '/gqe/os-password'],
    ['an ARN of another service', 'arn:aws:s3:::gqe-bucket/password'],
    ['a secret path under ssm', 'arn:aws:ssm:eu-west-1:123456789012:secret:gqe'],
  ])('refuse %s, naming the variable and the form expected', (_what, value) => {
    expect(() => loadConfig({ OS_PASSWORD_SECRET_ARN: value })).toThrow(
      new RegExp(
        `^OS_PASSWORD_SECRET_ARN: expected the ARN of a Secrets Manager secret or an SSM parameter, got '${value.replace(/[/.]/g, '\\$&')}'; for example OS_PASSWORD_SECRET_ARN=arn:aws:secretsmanager:`,
      ),
    );
  });
});

describe('a function instance whose STORE_URL is a secret', () => {
  const shared = freshLedgerPerTest('redis');

  it('opens the ledger the secret names; the environment holds only ARNs', async () => {
    secretsManager.on(GetSecretValueCommand, { SecretId: STORE_ARN }).resolves({ SecretString: shared.ledger.env.STORE_URL });
    secretsManager.on(GetSecretValueCommand, { SecretId: PASSWORD_ARN }).resolves({ SecretString: PASSWORD });
    const env = {
      STORE_URL_SECRET_ARN: STORE_ARN,
      OS_PASSWORD_SECRET_ARN: PASSWORD_ARN,
      REDIS_KEY_PREFIX: shared.ledger.env.REDIS_KEY_PREFIX,
      OS_AUTH_URL: 'http://127.0.0.1:9/v3',
      OS_USERNAME: 'gqe',
      OS_USER_DOMAIN_NAME: 'Default',
      OS_PROJECT_NAME: 'admin',
      OS_PROJECT_DOMAIN_NAME: 'Default',
      OS_SYSTEM_SCOPE: 'all',
      LOG_LEVEL: 'silent',
    };
    const services = await openFunctionServices(env, { secrets: awsSecretReader() });
    try {
      expect(services.pipeline.ledger.description).toMatch(/^redis:\/\/127\.0\.0\.1:6379\/0 keys gqe-test:/);
      expect(services.config.storeUrl).toBe(shared.ledger.env.STORE_URL);
      expect(secretIds().sort()).toEqual([PASSWORD_ARN, STORE_ARN].sort());
    } finally {
      await services.close();
    }
  });
});
