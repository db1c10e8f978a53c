import { reconcileHandler } from '../src/doors/lambda/reconcile.js';
import { onColdStart, openFunctionServices, servicesFromEnvironment, type FunctionServicesOptions } from '../src/doors/lambda/instance.js';

/** Scheduled trigger: the CLI's reconcile, within RECONCILE_BUDGET_SECONDS, resuming where it stopped (serverless.yml `schedule`). */
export const handler = reconcileHandler(servicesFromEnvironment);

/**
 * The same handler over `env` and stand-ins for Keystone and Glance (and, if given, for the
 * metrics sink): how the tests run the bundle (test/functions/bundle.test.ts), pipeline and store
 * included, as Lambda would.
 */
export const handlerOver = (env: NodeJS.ProcessEnv, options: FunctionServicesOptions) =>
  reconcileHandler(onColdStart(() => openFunctionServices(env, options)));
