import { z } from 'zod';

/**
 * Function mode's secrets: which settings may come from AWS Secrets Manager or SSM Parameter Store
 * instead of a plain environment variable, and how their ARNs read. config.ts declares the
 * `*_SECRET_ARN` variables with `secretArn`; src/doors/lambda/secrets.ts reads them.
 */

/** The settings a function may read from AWS Secrets Manager or SSM Parameter Store (src/doors/lambda/secrets.ts). */
export const SECRET_SETTINGS = ['OS_PASSWORD', 'OS_APPLICATION_CREDENTIAL_SECRET', 'STORE_URL'] as const;
export type SecretSetting = (typeof SECRET_SETTINGS)[number];

/** The service and region of a Secrets Manager secret's or an SSM parameter's ARN; undefined for anything else. */
export function parseSecretArn(arn: string): { service: 'secretsmanager' | 'ssm'; region: string } | undefined {
  const m = /^arn:aws[a-z-]*:(secretsmanager|ssm):([a-z0-9-]+):\d{12}:(secret:|parameter\/)./.exec(arn);
  if (!m || (m[1] === 'secretsmanager') !== (m[3] === 'secret:')) return undefined;
  return { service: m[1] as 'secretsmanager' | 'ssm', region: m[2]! };
}

/** The schema of `<setting>_SECRET_ARN` in EnvSchema: empty, or an ARN parseSecretArn reads. */
export function secretArn(setting: SecretSetting) {
  return z
    .string()
    .default('')
    .refine((v) => v === '' || parseSecretArn(v) !== undefined, {
      message: 'expected the ARN of a Secrets Manager secret or an SSM parameter',
    })
    .meta({
      description: `Function mode: \`${setting}\` read at the cold start from this Secrets Manager secret (\`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME\`, its string value) or SSM parameter (\`arn:aws:ssm:REGION:ACCOUNT:parameter/NAME\`, a SecureString is decrypted), instead of a plain environment variable (docs/serverless.md). Set this or \`${setting}\`, not both.`,
    });
}
