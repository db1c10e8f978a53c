/**
 * The second baseline of `bench:reconcile`: the enforcer's own Glance client (`GlanceClient.listImages`,
 * the streamed reader of src/openstack/) paging through the whole listing, keeping nothing. Between
 * the bare client and the pass: what the client costs is here, what the reconcile adds is the rest.
 * Prints `{"listed": N}`. Environment: the OS_* identity and GLANCE_URL, as for the enforcer.
 */
import { createLogger } from '../src/log.js';
import { loadCredentials } from '../src/openstack/credentials.js';
import { GlanceClient } from '../src/openstack/glance.js';
import { KeystoneClient } from '../src/openstack/keystone.js';

const log = createLogger('silent');
const glance = new GlanceClient(new KeystoneClient(loadCredentials(process.env, { searchDirs: [] }), { log }), { log });
let listed = 0;
for await (const _ of glance.listImages()) listed++;
process.stdout.write(`${JSON.stringify({ listed })}\n`);
