import { ENV_DEFAULTS } from '../config.js';
import { GlanceImage } from '../ledger/glance-image.js';
import type { DeleteOutcome, ListedPage, ListPosition, UnprotectOutcome } from '../pipeline/ports.js';
import { createLogger, type Logger } from '../log.js';
import { OpenStackHttpError, displayUrl, scrub } from './errors.js';
import { firstIssue } from '../zod-issues.js';
import { ImagesBody, nextPageSize, readWholeAfter, WHOLE_READ_BYTES } from './images-body.js';
import { ResponseBodyError, type BodySink, type HttpResponse, type RetryingTransport } from './http.js';
import type { KeystoneClient } from './keystone.js';

/**
 * Glance v2 client, with the project-scoped token of the enforcer's identity (admin on its
 * project). Facts from Glance 25.1 (Zed) behind it, checked on the lab:
 *
 * - An admin project token reads, lists and deletes every project's images; a system-scoped token
 *   lists only public and community images, so it is useless here.
 * - `GET /v2/images` leaves out `community` images unless `visibility=all` (or `community`) is
 *   passed, and ALWAYS filters on `os_hidden` (default false): hidden images come only with
 *   `os_hidden=true`. `listImages` therefore makes two passes.
 * - queued, saving, uploading, importing, active and deactivated images are listed. `killed` and
 *   `deleted` never are, whatever the `status` filter (the DB layer drops them); Glance's own quota
 *   usage does not count them either. `GET /v2/images/{id}` still returns a killed image (DELETE
 *   on it answers 204); a deleted one is 404.
 * - Pages: `limit` is capped at `api_limit_max` (default 1000); a full page carries
 *   `next: /v2/images?...&marker=<last id>`, the last page has no `next`.
 * - `DELETE` answers 204 (also for queued, uploading, deactivated and hidden images); 404 when the
 *   image is unknown or already deleted; 403 for a protected image ("Image <id> is protected and
 *   cannot be deleted.", also 403 when policy forbids); 409 when the store says it is in use.
 *   Errors come as JSON `{"message", "code", "title"}` only with `Accept: application/json`,
 *   otherwise as an HTML page.
 */

export interface ListImagesOptions {
  /** Project id whose images to list; without it, every project's (the admin token sees them all). */
  owner?: string;
  /**
   * Largest page size; Glance caps it at its api_limit_max (default 1000). The first page asks for
   * this many; later pages ask for fewer while pages weigh more than PAGE_TARGET_BYTES.
   */
  limit?: number;
  /**
   * Called for a listed image the enforcer cannot read (an unknown status, an odd id): it is left
   * out of the listing, logged and counted, and the listing goes on. Leaving it out can only make
   * a project look smaller, never cost an image.
   */
  onUnreadable?: (imageId: string, reason: string) => void;
}

export interface GlanceClientOptions {
  /** Base URL of Glance (no /v2); default GLANCE_URL, else the catalog's image endpoint. */
  glanceUrl?: string;
  /** GLANCE_RESPONSE_MAX_BYTES: bytes one Glance answer may have; default the config schema's. */
  responseMaxBytes?: number;
  log?: Logger;
}

/**
 * @example
 *   const glance = new GlanceClient(new KeystoneClient(loadCredentials()));
 *   for await (const image of glance.listImages({ owner: projectId })) console.log(image.id, image.status);
 *   await glance.deleteImage(imageId); // { result: 'deleted' } | { result: 'gone' } | { result: 'refused', ... }
 */
export class GlanceClient {
  private readonly transport: RetryingTransport;
  private readonly log: Logger;
  private baseUrl?: Promise<string>;

  constructor(
    private readonly keystone: KeystoneClient,
    private readonly options: GlanceClientOptions = {},
  ) {
    keystone.requireScope('project', 'glance');
    this.transport = keystone.transportFor('glance');
    this.log = options.log ?? createLogger();
  }

  /** The image, or null when Glance does not know it (404: never existed, or deleted). */
  async getImage(id: string): Promise<GlanceImage | null> {
    const url = `${await this.base()}/v2/images/${encodeURIComponent(id)}`;
    // One image is read whatever its size: memory does not grow with it (the body streams), so
    // a cap would only let a tenant hide an image behind megabytes of properties.
    const read = await this.read(url, 'image', undefined, false);
    if (read.response.status === 404) return null;
    if (read.response.status !== 200) throw this.unexpected('GET', url, read.response);
    const [raw] = read.body.images;
    if (raw === undefined)
      throw new OpenStackHttpError(
        'glance',
        'GET',
        displayUrl(url),
        200,
        `glance: GET ${displayUrl(url)} answered a body that is not an image; is the image endpoint really Glance v2?`,
      );
    return this.parseImage(url, raw);
  }

  /**
   * Deletes the image. 404 is `gone` (someone was faster, or a retry of ours); 403 (protected) and
   * 409 (in use) are Glance refusing, with its reason, for the caller to record.
   */
  async deleteImage(id: string): Promise<DeleteOutcome> {
    const url = `${await this.base()}/v2/images/${encodeURIComponent(id)}`;
    const response = await this.call('DELETE', url);
    if (response.status === 204 || response.status === 200) return { result: 'deleted' };
    if (response.status === 404) return { result: 'gone' };
    // Two DELETEs of one image at once (another enforcer, the owner): the loser gets 400 "Image
    // status transition from deleted to deleted is not allowed". The image is gone all the same.
    if (response.status === 400 && /from (deleted|pending_delete) to (deleted|pending_delete)/i.test(response.text)) return { result: 'gone' };
    if (response.status === 403 || response.status === 409) {
      this.log.info({ imageId: id, status: response.status }, 'glance refused to delete an image');
      return { result: 'refused', status: response.status, reason: glanceMessage(response) };
    }
    throw this.unexpected('DELETE', url, response);
  }

  /**
   * Clears the image's `protected` flag (JSON patch; an admin may, whoever the owner). 404 is
   * `gone`; 403 (policy) and 409 are Glance refusing, with its reason, for the caller to record.
   */
  async unprotectImage(id: string): Promise<UnprotectOutcome> {
    const url = `${await this.base()}/v2/images/${encodeURIComponent(id)}`;
    const body = JSON.stringify([{ op: 'replace', path: '/protected', value: false }]);
    const response = await this.keystone.withToken('project', (token) =>
      this.transport({
        method: 'PATCH',
        url,
        body,
        headers: { accept: 'application/json', 'content-type': 'application/openstack-images-v2.1-json-patch', 'x-auth-token': token },
        // The answer is the whole image, MBs of a tenant's properties included; only its status counts.
        sink: () => DISCARD,
      }),
    );
    if (response.status === 200) return { result: 'unprotected' };
    if (response.status === 404) return { result: 'gone' };
    if (response.status === 403 || response.status === 409) return { result: 'refused', status: response.status, reason: glanceMessage(response) };
    throw this.unexpected('PATCH', url, response);
  }

  /**
   * Every image of `owner` that Glance lists (see the module comment: not killed or deleted ones),
   * whatever its visibility, hidden or not, page after page; each id once, even when its os_hidden
   * flipped between the two passes. The ids seen are kept for that: one project's listing, not
   * the whole cloud's (that is `listPages`, which keeps nothing).
   */
  async *listImages(options: ListImagesOptions = {}): AsyncGenerator<GlanceImage, void, undefined> {
    const listed = new Set<string>();
    for await (const page of this.listPages(options)) {
      for (const image of page.images) {
        if (listed.has(image.id)) continue;
        listed.add(image.id);
        yield image;
      }
    }
  }

  /**
   * The listing page by page, from `from` (the first page of the non-hidden pass when absent),
   * each page with the position after it, so that a pass spanning many runs resumes by Glance's
   * own marker. Memory is one page, and the markers of this call (one per page, a few KB for a
   * million images): a marker seen twice is a Glance that loops.
   */
  async *listPages(options: ListImagesOptions & { from?: ListPosition | undefined } = {}): AsyncGenerator<ListedPage, void, undefined> {
    const base = await this.base();
    const maxLimit = options.limit ?? 1000;
    const from = options.from ?? { hidden: false };
    for (const hidden of from.hidden ? [true] : [false, true]) {
      let marker = hidden === from.hidden ? from.marker : undefined;
      let limit = maxLimit;
      let whole = true;
      const seen = new Set<string>();
      for (;;) {
        const page = await this.listPage(base, options, hidden ? 'true' : 'false', marker, limit, whole);
        const images: GlanceImage[] = [];
        for (const raw of page.body.images) {
          const image = this.readListed(page.url, raw, options);
          if (image) images.push(image);
        }
        limit = nextPageSize(page.body, page.limit, maxLimit);
        whole = readWholeAfter(page.body);
        // Rebuild the next page from its marker instead of following `next` verbatim: `next` is a
        // path from Glance's root, which is wrong behind a proxy that serves Glance under a prefix.
        const nextLink = page.body.next;
        const next = typeof nextLink === 'string' ? new URLSearchParams(nextLink.split('?')[1] ?? '').get('marker') : null;
        if (next !== null && seen.has(next))
          throw new OpenStackHttpError(
            'glance',
            'GET',
            displayUrl(page.url),
            200,
            `glance: listing images of ${options.owner ?? 'every project'} returned marker ${next} twice; stopping instead of looping`,
          );
        const after: ListPosition | null = next ? { hidden, marker: next } : hidden ? null : { hidden: true };
        yield { images, next: after };
        if (!next) break;
        seen.add(next);
        marker = next;
      }
    }
  }

  /**
   * One page of a listing. A page over GLANCE_RESPONSE_MAX_BYTES is asked again with fewer images
   * (as many as were whole before the cap, at most half as many), down to a single image, which is
   * read whatever its size: the cap bounds how long a page takes, never what can be listed.
   */
  private async listPage(
    base: string,
    options: ListImagesOptions,
    hidden: string,
    marker: string | undefined,
    limit: number,
    whole: boolean,
  ): Promise<{ url: string; limit: number; body: ImagesBody }> {
    for (;;) {
      const params = new URLSearchParams({ ...(options.owner ? { owner: options.owner } : {}), visibility: 'all', os_hidden: hidden, limit: String(limit) });
      if (marker) params.set('marker', marker);
      const url = `${base}/v2/images?${params.toString()}`;
      let read: { response: HttpResponse; body: ImagesBody };
      let partial: ImagesBody | undefined;
      try {
        // A page of one image is not capped (see getImage): no image can stop a listing.
        read = await this.read(url, 'listing', (body) => (partial = body), limit > 1, whole);
      } catch (error) {
        if (!(error instanceof ResponseBodyError && error.tooLarge)) throw error;
        const whole = partial?.images.length ?? 0;
        const smaller = Math.max(1, Math.min(Math.floor(limit / 2), whole));
        this.log.warn(
          { owner: options.owner, limit, smaller, maxBytes: this.maxBytes },
          'a glance listing page is over GLANCE_RESPONSE_MAX_BYTES; asking again with fewer images',
        );
        limit = smaller;
        continue;
      }
      if (read.response.status !== 200) throw this.unexpected('GET', url, read.response);
      if (!read.body.hasImages)
        throw new OpenStackHttpError(
          'glance',
          'GET',
          displayUrl(url),
          200,
          `glance: GET ${displayUrl(url)} answered a body without an images list; is the image endpoint really Glance v2?`,
        );
      return { url, limit, body: read.body };
    }
  }

  private get maxBytes(): number {
    return this.options.responseMaxBytes ?? ENV_DEFAULTS.GLANCE_RESPONSE_MAX_BYTES;
  }

  /**
   * GET `url`, its 200 body read by `ImagesBody` (whole while small and `whole`, else as it streams
   * in), bounded by GLANCE_RESPONSE_MAX_BYTES.
   * `reading` sees each attempt's reader, for what it had read when a cap cut the body off.
   */
  private async read(
    url: string,
    shape: 'listing' | 'image',
    reading?: (body: ImagesBody) => void,
    capped = true,
    whole = true,
  ): Promise<{ response: HttpResponse; body: ImagesBody }> {
    // A capped body streams from half its cap on, so that one cut off at the cap has been tokenized.
    const wholeBelow = !whole ? 0 : capped ? Math.min(WHOLE_READ_BYTES, Math.floor(this.maxBytes / 2)) : WHOLE_READ_BYTES;
    let body = new ImagesBody(shape, url, wholeBelow);
    const response = await this.keystone.withToken('project', (token) =>
      this.transport({
        method: 'GET',
        url,
        headers: { accept: 'application/json', 'x-auth-token': token },
        ...(capped ? { maxBodyBytes: this.maxBytes } : {}),
        sink: () => {
          body = new ImagesBody(shape, url, wholeBelow);
          reading?.(body);
          return body;
        },
      }),
    );
    return { response, body };
  }

  private call(method: 'GET' | 'DELETE', url: string): Promise<HttpResponse> {
    return this.keystone.withToken('project', (token) => this.transport({ method, url, headers: { accept: 'application/json', 'x-auth-token': token } }));
  }

  private base(): Promise<string> {
    const configured = this.options.glanceUrl ?? this.keystone.credentials.glanceUrl;
    this.baseUrl ??= configured
      ? Promise.resolve(stripVersion(configured))
      : this.keystone
          .endpoint('image', 'project')
          .then((e) => stripVersion(e.url))
          .catch((error: unknown) => {
            this.baseUrl = undefined;
            throw error;
          });
    return this.baseUrl;
  }

  private readListed(url: string, raw: unknown, options: ListImagesOptions): GlanceImage | undefined {
    try {
      return this.parseImage(url, raw);
    } catch (err) {
      const id = typeof raw === 'object' && raw !== null && 'id' in raw ? String((raw as { id: unknown }).id).slice(0, 64) : '?';
      this.log.warn({ imageId: id, err: (err as Error).message.slice(0, 300) }, 'glance listed an image the enforcer cannot read; skipped');
      options.onUnreadable?.(id, (err as Error).message);
      return undefined;
    }
  }

  private parseImage(url: string, raw: unknown): GlanceImage {
    const parsed = GlanceImage.safeParse(raw);
    if (parsed.success) return parsed.data;
    const id = typeof raw === 'object' && raw !== null && 'id' in raw ? String((raw as { id: unknown }).id) : '?';
    const issue = firstIssue(parsed.error);
    throw new OpenStackHttpError('glance', 'GET', displayUrl(url), 200, `glance: image ${id} has an unexpected '${issue.path}': ${issue.message}`);
  }

  private unexpected(method: string, url: string, response: HttpResponse): OpenStackHttpError {
    const hint =
      response.status === 401
        ? '; the project token was refused even after renewal: check glance-api.conf [keystone_authtoken] and that the enforcer still has a role on its project'
        : response.status === 403
          ? "; the enforcer needs the admin role on its project to act on other projects' images"
          : '';
    return new OpenStackHttpError(
      'glance',
      method,
      displayUrl(url),
      response.status,
      `glance: ${method} ${displayUrl(url)} answered ${response.status}: ${glanceMessage(response)}${hint}`,
    );
  }
}

/**
 * Glance's JSON error is `{"message": "<text><br /><br />\n\n\n", "code", "title"}`; keep the text,
 * scrubbed (a 403 page or a proxy may echo the X-Auth-Token or a password) before it is cut, so
 * that a secret cut in half cannot leak its first part, and before it reaches the audit table,
 * an error or a notification.
 */
export function glanceMessage(response: Pick<HttpResponse, 'text'>): string {
  let text = response.text;
  try {
    const body = JSON.parse(response.text) as { message?: unknown };
    if (typeof body.message === 'string') text = body.message;
  } catch {
    // An HTML page (Glance without Accept: application/json, or a proxy): strip the tags below.
  }
  return (
    scrub(text)
      .replace(/<[^>]*>/g, ' ')
      .replace(/\s+/g, ' ')
      .trim()
      .slice(0, 300) || '(empty body)'
  );
}

/** Reads a body and keeps nothing of it. */
const DISCARD: BodySink = { write: () => {}, end: () => {} };

/** Catalogs sometimes register Glance as `.../v2`; the client adds the version itself. */
function stripVersion(url: string): string {
  return url.replace(/\/+$/, '').replace(/\/v2(\.\d+)?$/, '');
}
