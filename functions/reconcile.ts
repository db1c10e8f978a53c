import { reconcileHandler } from '../src/functions/reconcile.js';
import { onColdStart, openFunctionServices, servicesFromEnvironment } from '../src/functions/runtime.js';

/** Scheduled trigger: the CLI's reconcile, within RECONCILE_BUDGET_SECONDS, resuming where it stopped (serverless.yml `schedule`). */
export const handler = reconcileHandler(servicesFromEnvironment);

/**
 * The same handler over `env` and in-memory stand-ins for Keystone and Glance: how the tests run
 * the bundle (test/functions/bundle.test.ts), pipeline and store included, as Lambda would.
 */
export const handlerOver = (env: NodeJS.ProcessEnv, openstack: Parameters<typeof openFunctionServices>[1]) =>
  reconcileHandler(onColdStart(() => openFunctionServices(env, openstack)));
