import { sqsHandler } from '../src/doors/lambda/sqs.js';
import { onColdStart, openFunctionServices, servicesFromEnvironment, type FunctionServicesOptions } from '../src/doors/lambda/instance.js';

/** SQS trigger: Glance's notifications forwarded by `glance-quota-enforcer bridge` (serverless.yml `sqs`). */
export const handler = sqsHandler(servicesFromEnvironment);

/**
 * The same handler over `env` and stand-ins for Keystone and Glance (and, if given, for the
 * metrics sink): how the tests run the bundle (test/functions/bundle.test.ts), pipeline and store
 * included, as Lambda would.
 */
export const handlerOver = (env: NodeJS.ProcessEnv, options: FunctionServicesOptions) => sqsHandler(onColdStart(() => openFunctionServices(env, options)));
