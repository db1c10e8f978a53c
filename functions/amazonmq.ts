import { amazonMqHandler } from '../src/functions/amazonmq.js';
import { onColdStart, openFunctionServices, servicesFromEnvironment } from '../src/functions/runtime.js';

/** Amazon MQ (RabbitMQ) trigger: Glance's notifications from the broker's queue (serverless.yml `rabbitmq`). */
export const handler = amazonMqHandler(servicesFromEnvironment);

/**
 * The same handler over `env` and in-memory stand-ins for Keystone and Glance: how the tests run
 * the bundle (test/functions/bundle.test.ts), pipeline and store included, as Lambda would.
 */
export const handlerOver = (env: NodeJS.ProcessEnv, openstack: Parameters<typeof openFunctionServices>[1]) =>
  amazonMqHandler(onColdStart(() => openFunctionServices(env, openstack)));
