import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ConfigError } from '../errors.js';
import { glanceOverLimitBody } from '../quota/admission.js';
import type { AdmissionAnswer, AdmissionGate } from './admission.js';

/**
 * The admission endpoint's fixed HTTP contract, which proxy configs rely on (deploy/nginx/,
 * docs/operators.md): any method on `/admission/v1/image-create`; the original request from
 * X-Original-Method and X-Original-URI (nginx's auth_request subrequest is a GET of its own),
 * else this request's own method and path (Envoy's ext_authz sends the original); the client's
 * X-Auth-Token. Allow: 200, empty body (Envoy allows only on 200). Deny: 403 with X-Quota-*
 * headers, X-Quota-Message in Glance's words; `?deny_status=413` (or the header
 * X-Quota-Deny-Status: 413) answers 413 with Glance's JSON body itself. Never a 5xx: the proxy reads one as "the check failed".
 */
export const ADMISSION_PATH = '/admission/v1/image-create';

/** The first value of a header; Node joins repeated ones, and a client may repeat X-Auth-Token. */
function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  const first = Array.isArray(value) ? value[0] : value?.split(',')[0];
  return first?.trim() || undefined;
}

/** The original request as the proxy tells it. */
export function admissionRequestOf(req: IncomingMessage): { method: string; uri: string; token: string | undefined } {
  const ownUri = req.url ?? '/';
  // Envoy's ext_authz with a path_prefix sends the original path after ours.
  const tail = ownUri.startsWith(ADMISSION_PATH) ? ownUri.slice(ADMISSION_PATH.length) : ownUri;
  const originalUri = header(req, 'x-original-uri') ?? (tail.startsWith('/') ? tail : '/');
  return { method: header(req, 'x-original-method') ?? req.method ?? 'GET', uri: originalUri, token: header(req, 'x-auth-token') };
}

/** The HTTP answer of a decision: status, headers, body. */
export function httpAnswer(answer: AdmissionAnswer, denyStatus: 403 | 413): { status: number; headers: Record<string, string>; body: string } {
  const headers: Record<string, string> = { 'x-quota-decision': answer.decision, 'x-quota-reason': answer.reason };
  if (answer.projectId) headers['x-quota-project'] = answer.projectId;
  if (answer.over) {
    Object.assign(headers, {
      'x-quota-resource': answer.over.resource,
      'x-quota-limit': String(answer.over.limit),
      'x-quota-usage': String(answer.over.usage),
      'x-quota-message': answer.over.message,
    });
  }
  if (answer.decision === 'allow') return { status: 200, headers, body: '' };
  const message = answer.over?.message ?? 'The image quota check is unavailable (ADMISSION_FAIL=closed); try again later';
  headers['x-quota-message'] = message;
  if (denyStatus === 413) return { status: 413, headers: { ...headers, 'content-type': 'application/json' }, body: glanceOverLimitBody(message) };
  return { status: 403, headers, body: '' };
}

async function serve(gate: AdmissionGate, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://admission');
  if (!url.pathname.startsWith(ADMISSION_PATH)) {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end(`not found: the admission endpoint is ${ADMISSION_PATH}\n`);
    return;
  }
  // The check carries no body worth reading (Envoy may forward one): drained, never buffered.
  req.resume();
  const answer = await gate.decide(admissionRequestOf(req));
  // Envoy appends the original path to its path_prefix, so it cannot carry the query: it says
  // the same with a header of the check request (authorization_request.headers_to_add).
  const as413 = url.searchParams.get('deny_status') === '413' || header(req, 'x-quota-deny-status') === '413';
  const { status, headers, body } = httpAnswer(answer, as413 ? 413 : 403);
  res.writeHead(status, { ...headers, 'content-length': String(Buffer.byteLength(body)) });
  res.end(body);
}

/**
 * Listens on ADMISSION_HOST:ADMISSION_PORT. Keep-alive, so that the proxy's upstream keepalive
 * reuses connections (one TCP handshake per request was most of the endpoint's cost).
 */
export async function startAdmissionServer(gate: AdmissionGate, listen: { port: number; host: string }): Promise<{ server: Server; port: number }> {
  const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    serve(gate, req, res).catch(() => {
      // decide() never rejects; this is a socket gone away mid-answer.
      if (!res.headersSent) res.writeHead(200).end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'is already in use' : err.code === 'EADDRNOTAVAIL' ? 'is not an address of this host' : `failed (${err.message})`;
      reject(
        new ConfigError(
          `ADMISSION_HOST/ADMISSION_PORT: listening on ${listen.host}:${listen.port} ${why}; set ADMISSION_PORT to a free port or ADMISSION_HOST to one of this host's addresses`,
        ),
      );
    });
    server.listen(listen.port, listen.host, () => resolve());
  });
  return { server, port: (server.address() as AddressInfo).port };
}
