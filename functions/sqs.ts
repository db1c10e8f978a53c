import { servicesFromEnvironment } from '../src/functions/runtime.js';
import { sqsHandler } from '../src/functions/sqs.js';

/** SQS trigger: Glance's notifications forwarded by `glance-quota-enforcer bridge` (serverless.yml `sqs`). */
export const handler = sqsHandler(servicesFromEnvironment);
