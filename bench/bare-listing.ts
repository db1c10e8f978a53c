/**
 * The baseline of `bench:reconcile`: the least a client can do to page through Glance's whole
 * listing, as the enforcer's client pages it (a project-scoped token, `visibility=all`, both
 * `os_hidden` passes, 1000 a page, each next page built from its marker), with fetch and
 * JSON.parse of each page, keeping nothing. Prints `{"listed": N}`.
 *
 * Environment: OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_USER_DOMAIN_NAME, OS_PROJECT_NAME,
 * OS_PROJECT_DOMAIN_NAME (a Keystone), GLANCE_URL.
 */
const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name}: not set; bench/reconcile.ts sets it for this child`);
  return value;
};

const auth = await fetch(`${env('OS_AUTH_URL')}/auth/tokens`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({
    auth: {
      identity: {
        methods: ['password'],
        password: { user: { name: env('OS_USERNAME'), domain: { name: env('OS_USER_DOMAIN_NAME') }, password: env('OS_PASSWORD') } },
      },
      scope: { project: { name: env('OS_PROJECT_NAME'), domain: { name: env('OS_PROJECT_DOMAIN_NAME') } } },
    },
  }),
});
const token = auth.headers.get('x-subject-token');
if (!auth.ok || !token) throw new Error(`OS_AUTH_URL: Keystone answered ${auth.status} to a password auth, without a token`);
await auth.body?.cancel();

let listed = 0;
for (const hidden of ['false', 'true']) {
  let marker = '';
  for (;;) {
    const query = new URLSearchParams({ visibility: 'all', os_hidden: hidden, limit: '1000', ...(marker ? { marker } : {}) });
    const response = await fetch(`${env('GLANCE_URL')}/v2/images?${query.toString()}`, { headers: { accept: 'application/json', 'x-auth-token': token } });
    if (!response.ok) throw new Error(`GLANCE_URL: GET /v2/images answered ${response.status}`);
    const page = JSON.parse(await response.text()) as { images: unknown[]; next?: string };
    listed += page.images.length;
    const next = page.next ? new URLSearchParams(page.next.split('?')[1] ?? '').get('marker') : null;
    if (!next) break;
    marker = next;
  }
}
process.stdout.write(`${JSON.stringify({ listed })}\n`);
