import http from 'node:http';
import https from 'node:https';
import { setTimeout as sleepMs } from 'node:timers/promises';
import type { Logger } from '../log.js';
import { OpenStackUnreachableError, displayUrl } from './errors.js';
import { backoffMs } from '../retry.js';

/*
 * Why node:http(s) and not the global fetch: OS_CACERT must apply to these calls only, at run time.
 * Node's fetch takes a CA only through an undici `Agent` passed as `dispatcher`, and Node (22) does
 * not export undici (it is internal; `undici` would be one more dependency), while
 * NODE_EXTRA_CA_CERTS is read once at process start. `https.request({ ca })` is public, stable and
 * scoped to the call, so every Keystone and Glance call goes through `send` below, with or
 * without a CA, and there is one code path to test.
 */

export interface HttpRequest {
  method: 'GET' | 'POST' | 'DELETE' | 'PATCH' | 'PUT';
  url: string;
  headers?: Record<string, string>;
  body?: string;
}

export interface HttpResponse {
  status: number;
  /** Lower-case names; a repeated header keeps its first value. */
  headers: Record<string, string | undefined>;
  text: string;
}

/**
 * How hard to try. `attempts` counts the first try; the delay before retry n (1-based) is drawn
 * uniformly from [0, min(maxDelayMs, baseDelayMs * 2^(n-1))] ("full jitter"), so a fleet of
 * enforcers that lost Keystone at the same moment does not come back in lockstep.
 */
export interface RetryPolicy {
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** Per attempt, whole response included (AbortSignal.timeout). */
  timeoutMs: number;
}

/** 4 attempts, about 0.25 + 0.5 + 1 s of waiting at most, 10 s per attempt. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = { attempts: 4, baseDelayMs: 250, maxDelayMs: 4_000, timeoutMs: 10_000 };

/** Delay before retry number `retry` (1 for the first retry): its ceiling is `baseDelayMs` at first. */
export function backoffDelayMs(retry: number, policy: RetryPolicy, random: () => number = Math.random): number {
  return backoffMs(retry - 1, policy.baseDelayMs, policy.maxDelayMs, random);
}

/**
 * Only a server-side failure is worth repeating. A 4xx says the request itself is wrong (a 401 is
 * handled one level up, by renewing the token once), so repeating it only adds load.
 */
export function isRetryableStatus(status: number): boolean {
  return status >= 500 && status <= 599;
}

export interface TransportOptions {
  /** PEM bundle trusted for https (OS_CACERT). Like `verify=<cacert>` in openstacksdk, it replaces the default roots. */
  ca?: string;
  timeoutMs: number;
}

/** One attempt. Rejects on connection errors and timeouts; any HTTP status resolves. */
export function send(request: HttpRequest, options: TransportOptions): Promise<HttpResponse> {
  const url = new URL(request.url);
  const isHttps = url.protocol === 'https:';
  const headers: Record<string, string> = { ...request.headers };
  if (request.body !== undefined) headers['content-length'] = String(Buffer.byteLength(request.body));
  const signal = AbortSignal.timeout(options.timeoutMs);
  return new Promise<HttpResponse>((resolve, reject) => {
    // The timeout covers the body too: a server that sends headers and then stalls is also cut off.
    const fail = (error: Error) => reject(signal.aborted ? new Error(`timed out after ${options.timeoutMs} ms`) : error);
    const onResponse = (res: http.IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', fail);
      res.on('end', () => {
        const out: Record<string, string | undefined> = {};
        for (const [name, value] of Object.entries(res.headers)) {
          out[name] = Array.isArray(value) ? value[0] : value;
        }
        resolve({ status: res.statusCode ?? 0, headers: out, text: Buffer.concat(chunks).toString('utf8') });
      });
    };
    const req = isHttps
      ? https.request(url, { method: request.method, headers, signal, ...(options.ca ? { ca: options.ca } : {}) }, onResponse)
      : http.request(url, { method: request.method, headers, signal }, onResponse);
    req.on('error', fail);
    if (request.body !== undefined) req.write(request.body);
    req.end();
  });
}

export interface RetryingTransport {
  (request: HttpRequest): Promise<HttpResponse>;
}

export interface RetryingTransportOptions {
  service: 'keystone' | 'glance';
  policy: RetryPolicy;
  ca?: string;
  log: Logger;
  /** Injected by tests to make backoff instant and deterministic. */
  sleep?: (ms: number) => Promise<unknown>;
  random?: () => number;
}

/**
 * `send` with bounded retries on 5xx and on connection errors. After the last attempt a 5xx is
 * returned as is (the caller turns it into an error naming the call), and a connection error
 * becomes an `OpenStackUnreachableError`. Every other status is returned at once.
 */
export function retryingTransport(options: RetryingTransportOptions): RetryingTransport {
  const sleep = options.sleep ?? sleepMs;
  const { policy, service, log } = options;
  return async (request) => {
    let lastError = '';
    let lastCause: unknown;
    for (let attempt = 1; attempt <= policy.attempts; attempt++) {
      if (attempt > 1) await sleep(backoffDelayMs(attempt - 1, policy, options.random));
      const transportOptions: TransportOptions = { timeoutMs: policy.timeoutMs, ...(options.ca ? { ca: options.ca } : {}) };
      try {
        const response = await send(request, transportOptions);
        if (!isRetryableStatus(response.status) || attempt === policy.attempts) return response;
        lastError = `HTTP ${response.status}`;
      } catch (error) {
        if (isCertificateError(error)) {
          // A certificate does not get better by asking again.
          throw new OpenStackUnreachableError(
            service, request.method, displayUrl(request.url), attempt,
            `${service}: ${request.method} ${displayUrl(request.url)}: the server's certificate is not trusted (${describeConnectionError(error)}). ` +
              `Set OS_CACERT to the PEM file of the CA that signed it${options.ca ? ' (the current OS_CACERT does not hold it)' : ''}.`,
            { cause: error },
          );
        }
        lastError = describeConnectionError(error);
        lastCause = error;
      }
      if (attempt < policy.attempts) {
        log.warn({ service, method: request.method, url: displayUrl(request.url), attempt, of: policy.attempts, error: lastError }, `${service} call failed, retrying`);
      }
    }
    throw new OpenStackUnreachableError(
      service, request.method, displayUrl(request.url), policy.attempts,
      `${service}: ${request.method} ${displayUrl(request.url)} got no answer after ${policy.attempts} attempts (last: ${lastError}). ` +
        `Check that ${service === 'keystone' ? 'OS_AUTH_URL' : 'the image endpoint (catalog or GLANCE_URL)'} is reachable from this host` +
        `${request.url.startsWith('https:') ? ' and that OS_CACERT holds the CA of its certificate' : ''}.`,
      { cause: lastCause },
    );
  };
}

/** Node's TLS verification failures: self-signed, unknown issuer, expired, wrong host name. */
function isCertificateError(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code ?? '';
  return /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ERR_TLS_CERT_ALTNAME_INVALID/.test(code);
}

function describeConnectionError(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code && !error.message.includes(code) ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}
