import { amazonMqHandler } from '../src/functions/amazonmq.js';
import { servicesFromEnvironment } from '../src/functions/runtime.js';

/** Amazon MQ (RabbitMQ) trigger: Glance's notifications from the broker's queue (serverless.yml `rabbitmq`). */
export const handler = amazonMqHandler(servicesFromEnvironment);
