import { amazonMqHandler } from '../src/doors/lambda/amazonmq.js';
import { onColdStart, openFunctionServices, servicesFromEnvironment, type FunctionServicesOptions } from '../src/doors/lambda/instance.js';

/** Amazon MQ (RabbitMQ) trigger: Glance's notifications from the broker's queue (serverless.yml `rabbitmq`). */
export const handler = amazonMqHandler(servicesFromEnvironment);

/**
 * The same handler over `env` and stand-ins for Keystone and Glance (and, if given, for the
 * metrics sink): how the tests run the bundle (test/functions/bundle.test.ts), pipeline and store
 * included, as Lambda would.
 */
export const handlerOver = (env: NodeJS.ProcessEnv, options: FunctionServicesOptions) => amazonMqHandler(onColdStart(() => openFunctionServices(env, options)));
