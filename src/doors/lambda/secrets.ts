import { loadSecretArns } from '../../config.js';
import { parseSecretArn, SECRET_SETTINGS, type SecretSetting } from '../../secret-arns.js';
import { ConfigError } from '../../errors.js';

/**
 * The enforcer's secrets in function mode: `OS_PASSWORD`, `OS_APPLICATION_CREDENTIAL_SECRET` and
 * `STORE_URL` (its password) read at the cold start from AWS Secrets Manager or SSM Parameter
 * Store, named by `<SETTING>_SECRET_ARN`, instead of plain Lambda environment variables (which
 * anyone allowed `lambda:GetFunctionConfiguration` reads). An ARN, not a name: the function's
 * role is granted exactly that ARN (serverless.yml), and the ARN says which service and region
 * to ask.
 */

/** Reads one secret's value; `arn` is of the kind the method is named for. */
export interface SecretReader {
  secretsManager(arn: string): Promise<string>;
  parameterStore(arn: string): Promise<string>;
}

/** `secretsmanager` or `ssm`, and the region, of a secret's ARN (config.ts has validated its form). */
function serviceOf(arn: string): { service: 'secretsmanager' | 'ssm'; region: string } {
  const parsed = parseSecretArn(arn);
  if (!parsed) throw new ConfigError(`expected arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME or arn:aws:ssm:REGION:ACCOUNT:parameter/NAME, got '${arn}'`);
  return parsed;
}

/**
 * `env` with each secret that has a `<SETTING>_SECRET_ARN` read from where the ARN points. A
 * setting given both ways is refused (which one was meant?). A value read loses its trailing
 * newline, which a secret made from a file often carries; nothing else is changed. Errors name
 * the variable and the ARN, never a value.
 *
 * @example
 *   const env = await resolveSecrets(process.env);   // OS_PASSWORD_SECRET_ARN=arn:aws:secretsmanager:...
 */
export async function resolveSecrets(env: NodeJS.ProcessEnv, reader: SecretReader = awsSecretReader()): Promise<NodeJS.ProcessEnv> {
  const secretArns = loadSecretArns(env);
  const wanted = SECRET_SETTINGS.filter((name) => secretArns[name] !== '');
  if (wanted.length === 0) return env;
  const values = await Promise.all(wanted.map((name) => readSecret(name, secretArns[name], env, reader)));
  return { ...env, ...Object.fromEntries(wanted.map((name, i) => [name, values[i]])) };
}

async function readSecret(name: SecretSetting, arn: string, env: NodeJS.ProcessEnv, reader: SecretReader): Promise<string> {
  const variable = `${name}_SECRET_ARN`;
  if (env[name])
    throw new ConfigError(`${name}: given both as a value and as ${variable}; unset ${name} (the secure way: only the ARN in the function's environment)`);
  const { service } = serviceOf(arn);
  let value: string;
  try {
    value = service === 'secretsmanager' ? await reader.secretsManager(arn) : await reader.parameterStore(arn);
  } catch (err) {
    const e = err as Error;
    const action = service === 'secretsmanager' ? 'secretsmanager:GetSecretValue' : 'ssm:GetParameter';
    throw new ConfigError(
      `${variable}: cannot read ${arn} (${e.name}: ${e.message}); check that it exists and that the function's role allows ${action} on it`,
      { cause: err },
    );
  }
  value = value.replace(/\r?\n$/, '');
  if (value === '') throw new ConfigError(`${variable}: ${arn} is empty; put the ${name} value in it`);
  return value;
}

/**
 * Secrets Manager and SSM through the AWS SDK, a client per service and region, made (and the
 * SDK loaded) only when a secret is asked for: functions without secrets never load it. Values
 * are kept for the life of the instance, so a cold start that failed (the store down) and is
 * tried again does not ask again.
 */
export function awsSecretReader(): SecretReader {
  const cache = new Map<string, Promise<string>>();
  const once = (arn: string, read: () => Promise<string>) => {
    let value = cache.get(arn);
    if (!value) {
      value = read();
      cache.set(arn, value);
      value.catch(() => cache.delete(arn));
    }
    return value;
  };
  return {
    secretsManager: (arn) =>
      once(arn, async () => {
        const { SecretsManagerClient, GetSecretValueCommand } = await import('@aws-sdk/client-secrets-manager');
        const client = new SecretsManagerClient({ region: serviceOf(arn).region });
        try {
          const { SecretString } = await client.send(new GetSecretValueCommand({ SecretId: arn }));
          if (SecretString === undefined) throw new Error('the secret holds binary data, not a string');
          return SecretString;
        } finally {
          client.destroy();
        }
      }),
    parameterStore: (arn) =>
      once(arn, async () => {
        const { SSMClient, GetParameterCommand } = await import('@aws-sdk/client-ssm');
        const client = new SSMClient({ region: serviceOf(arn).region });
        try {
          // A SecureString is decrypted; a String is read as it is.
          const { Parameter } = await client.send(new GetParameterCommand({ Name: arn, WithDecryption: true }));
          if (Parameter?.Value === undefined) throw new Error('the parameter has no value');
          return Parameter.Value;
        } finally {
          client.destroy();
        }
      }),
  };
}
