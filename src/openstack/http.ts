import http from 'node:http';
import https from 'node:https';
import { setTimeout as sleepMs } from 'node:timers/promises';
import type { Logger } from '../log.js';
import { OpenStackHttpError, OpenStackUnreachableError, displayUrl } from './errors.js';
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
  /**
   * Streams a 200 body to a sink instead of collecting it into `text` (then ''): a Glance listing
   * can be far larger than one string may be. Called once per attempt that got a 200, so a retry
   * after a reset never feeds a parser that already holds half a body. Any other status is still
   * collected into `text`, its first ERROR_BODY_KEPT_BYTES only.
   */
  sink?: () => BodySink;
  /** Bytes of body read at most; past it the attempt is aborted with a `ResponseBodyError`, never retried. */
  maxBodyBytes?: number;
}

/** Takes a body chunk by chunk. A throw fails the call with that error, not retried: the same body would come again. */
export interface BodySink {
  write(chunk: Buffer): void;
  /** The body is complete: a parser says here whether it was a whole document. */
  end(): void;
}

/** What a streamed call keeps of a non-200 body: enough for any error message, never a tenant's megabytes. */
export const ERROR_BODY_KEPT_BYTES = 64 * 1024;

/**
 * A body that was refused rather than lost: over `maxBodyBytes` (`tooLarge`), or thrown out by its
 * sink (`cause`). Asking again brings the same body, so the retrying transport does not.
 */
export class ResponseBodyError extends OpenStackHttpError {
  constructor(
    service: 'keystone' | 'glance',
    request: HttpRequest,
    status: number,
    detail: string,
    readonly tooLarge?: { limit: number },
    options?: ErrorOptions,
  ) {
    super(service, request.method, displayUrl(request.url), status, `${service}: ${request.method} ${displayUrl(request.url)}: ${detail}`);
    if (options?.cause !== undefined) this.cause = options.cause;
  }
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
  /** Who is asked, for the errors of a refused body; default glance (the only one that streams). */
  service?: 'keystone' | 'glance';
}

/** One attempt. Rejects on connection errors, timeouts and refused bodies; any HTTP status resolves. */
export function send(request: HttpRequest, options: TransportOptions): Promise<HttpResponse> {
  const url = new URL(request.url);
  const isHttps = url.protocol === 'https:';
  const headers: Record<string, string> = { ...request.headers };
  if (request.body !== undefined) headers['content-length'] = String(Buffer.byteLength(request.body));
  const signal = AbortSignal.timeout(options.timeoutMs);
  const service = options.service ?? 'glance';
  return new Promise<HttpResponse>((resolve, reject) => {
    let settled = false;
    // The timeout covers the body too: a server that sends headers and then stalls is also cut off.
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      reject(signal.aborted && !(error instanceof ResponseBodyError) ? new Error(`timed out after ${options.timeoutMs} ms`) : error);
    };
    const onResponse = (res: http.IncomingMessage) => {
      const status = res.statusCode ?? 0;
      const out: Record<string, string | undefined> = {};
      for (const [name, value] of Object.entries(res.headers)) {
        out[name] = Array.isArray(value) ? value[0] : value;
      }
      const streamed = request.sink !== undefined;
      const sink = streamed && status === 200 ? request.sink!() : undefined;
      const chunks: Buffer[] = [];
      let kept = 0;
      let bytes = 0;
      // A refused body aborts the request: nothing more is read, and the socket is not reused.
      const refuse = (error: ResponseBodyError) => {
        fail(error);
        req.destroy();
      };
      res.on('data', (chunk: Buffer) => {
        if (settled) return;
        bytes += chunk.length;
        if (request.maxBodyBytes !== undefined && bytes > request.maxBodyBytes) {
          refuse(new ResponseBodyError(service, request, status, `the body is over ${request.maxBodyBytes} bytes`, { limit: request.maxBodyBytes }));
          return;
        }
        if (sink) {
          try {
            sink.write(chunk);
          } catch (error) {
            refuse(new ResponseBodyError(service, request, status, `the body was refused: ${(error as Error).message}`, undefined, { cause: error }));
          }
        } else if (!streamed) {
          chunks.push(chunk);
        } else if (kept < ERROR_BODY_KEPT_BYTES) {
          const part = chunk.subarray(0, ERROR_BODY_KEPT_BYTES - kept);
          chunks.push(part);
          kept += part.length;
        }
      });
      res.on('error', fail);
      res.on('end', () => {
        if (settled) return;
        if (sink) {
          try {
            sink.end();
          } catch (error) {
            fail(new ResponseBodyError(service, request, status, `the body was refused: ${(error as Error).message}`, undefined, { cause: error }));
            return;
          }
        }
        let text: string;
        try {
          text = Buffer.concat(chunks).toString('utf8');
        } catch (error) {
          // Over 512 MiB a body cannot be one string (ERR_STRING_TOO_LONG): fail the call, not the process.
          fail(error as Error);
          return;
        }
        settled = true;
        resolve({ status, headers: out, text });
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

export type RetryingTransport = (request: HttpRequest) => Promise<HttpResponse>;

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
      const transportOptions: TransportOptions = { timeoutMs: policy.timeoutMs, service, ...(options.ca ? { ca: options.ca } : {}) };
      try {
        const response = await send(request, transportOptions);
        if (!isRetryableStatus(response.status) || attempt === policy.attempts) return response;
        lastError = `HTTP ${response.status}`;
      } catch (error) {
        // The caller's own verdict on the body (its sink threw, or the body is over its cap).
        if (error instanceof ResponseBodyError) throw error.tooLarge ? error : (error.cause ?? error);
        if (isCertificateError(error)) {
          // A certificate does not get better by asking again.
          throw new OpenStackUnreachableError(
            service,
            request.method,
            displayUrl(request.url),
            attempt,
            `${service}: ${request.method} ${displayUrl(request.url)}: the server's certificate is not trusted (${describeConnectionError(error)}). ` +
              `Set OS_CACERT to the PEM file of the CA that signed it${options.ca ? ' (the current OS_CACERT does not hold it)' : ''}.`,
            { cause: error },
          );
        }
        lastError = describeConnectionError(error);
        lastCause = error;
      }
      if (attempt < policy.attempts) {
        log.warn(
          { service, method: request.method, url: displayUrl(request.url), attempt, of: policy.attempts, error: lastError },
          `${service} call failed, retrying`,
        );
      }
    }
    throw new OpenStackUnreachableError(
      service,
      request.method,
      displayUrl(request.url),
      policy.attempts,
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
