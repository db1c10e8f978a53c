import { reconcileHandler } from '../src/functions/reconcile.js';
import { servicesFromEnvironment } from '../src/functions/runtime.js';

/** Scheduled trigger: the CLI's reconcile, within RECONCILE_BUDGET_SECONDS, resuming where it stopped (serverless.yml `schedule`). */
export const handler = reconcileHandler(servicesFromEnvironment);
