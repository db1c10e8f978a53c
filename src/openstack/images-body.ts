import { JsonTokenizer, Token, type TokenReader } from '../json-stream.js';
import { GlanceImage } from '../ledger/glance-image.js';
import { OpenStackHttpError, displayUrl } from './errors.js';
import type { BodySink } from './http.js';

/**
 * What a listing page should weigh. An honest image is 1-3 KiB, so 1000 of them stay well under it
 * and the page size stays at the limit asked for; images fattened with MB-sized properties shrink
 * the next page until it is about this size again.
 */
export const PAGE_TARGET_BYTES = 4 * 1024 * 1024;

/**
 * A body up to this size is read whole, with V8's JSON.parse, which is about twice as fast as the
 * tokenizer on the pages a cloud's listing is made of (bench/README.md, `bench:listing` and
 * `bench:reconcile`); past it the body streams through the tokenizer. Twice PAGE_TARGET_BYTES, so
 * that every page the size rule aims at is parsed whole, and what a whole read can hold at once is
 * bounded: a fat first page costs at most this much text before it streams.
 */
export const WHOLE_READ_BYTES = 2 * PAGE_TARGET_BYTES;

/**
 * An image over this (on average, on the page before) is fat with a tenant's properties: JSON.parse
 * would decode every byte of them, where the tokenizer skips them undecoded (twice as fast on 1.2 MB
 * images), so the next page streams. Honest images weigh 1-3 KiB.
 */
const FAT_IMAGE_BYTES = 64 * 1024;

/** Whether the page after this one should be read whole: unless its images were fat (FAT_IMAGE_BYTES). */
export function readWholeAfter(page: Pick<ImagesBody, 'bytes' | 'images'>): boolean {
  return page.images.length === 0 || page.bytes / page.images.length < FAT_IMAGE_BYTES;
}

/** The page size after a page: PAGE_TARGET_BYTES worth of images of this page's average weight, 1 to `maxLimit`. */
export function nextPageSize(page: Pick<ImagesBody, 'bytes' | 'images'>, limit: number, maxLimit: number): number {
  if (page.images.length === 0) return limit;
  const average = page.bytes / page.images.length;
  return Math.max(1, Math.min(maxLimit, Math.floor(PAGE_TARGET_BYTES / average)));
}

/**
 * What a kept value is recorded as: itself, or an empty object or array for a container (the
 * schema then names the field), or '...' for a string not decoded (where an image should be).
 */
function standIn(token: Token, value: string | number | undefined): unknown {
  switch (token) {
    case Token.BeginObject:
      return {};
    case Token.BeginArray:
      return [];
    case Token.True:
      return true;
    case Token.False:
      return false;
    case Token.Null:
      return null;
    case Token.String:
      return value ?? '...';
    default:
      return value;
  }
}

/** The fields of an image the enforcer reads (GlanceImage); every other key is skipped as it streams by. */
const KEPT_FIELDS: ReadonlySet<string> = new Set(Object.keys(GlanceImage.shape));
const KEPT_LIST: readonly string[] = [...KEPT_FIELDS];

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** A parsed value as the tokenizer keeps it (standIn): a container empty, anything else itself. */
function keptValue(value: unknown): unknown {
  return Array.isArray(value) ? [] : isObject(value) ? {} : value;
}

/**
 * A parsed image with KEPT_FIELDS only, as the tokenizer keeps it; what stands in an image's place
 * is kept as the tokenizer would (a string there is not decoded: '...').
 */
function keptImage(value: unknown): unknown {
  if (!isObject(value)) return typeof value === 'string' ? '...' : keptValue(value);
  const kept: Record<string, unknown> = {};
  for (const key of KEPT_LIST) if (Object.hasOwn(value, key)) kept[key] = keptValue(value[key]);
  return kept;
}

interface OpenContainer {
  object: boolean;
  /** The key whose value comes next (objects). */
  key?: string;
  expectKey: boolean;
}

/**
 * A Glance body (`{"images": [...], "next": ...}` for a listing, the image object itself for a GET)
 * read whole while it stays under `wholeBelow` bytes (JSON.parse, then only the fields below are
 * kept), else token by token as it streams in. It keeps only KEPT_FIELDS of each image and `next`: a
 * tenant's MB-sized extra properties (top-level keys of the image in the v2 API) are skipped by
 * the tokenizer without being decoded, so a page costs the memory of what the rule reads,
 * whatever it weighs. A kept field that holds an object or an array is kept as an
 * empty one, for the schema to name it.
 */
export class ImagesBody implements BodySink, TokenReader {
  /** The images, each with its kept fields only (or what stood in an image's place, for the schema to refuse). */
  readonly images: unknown[] = [];
  next: unknown;
  /** A listing's `images` was an array. */
  hasImages = false;
  bytes = 0;
  private readonly tokenizer = new JsonTokenizer(this);
  private readonly open: OpenContainer[] = [];
  private image: Record<string, unknown> | undefined;
  private complete = false;
  private readonly imageDepth: number;
  /** The chunks of a body still under `wholeBelow`; null once it streams through the tokenizer. */
  private pending: Buffer[] | null = [];

  /**
   * @param wholeBelow bytes under which the body is read whole (default WHOLE_READ_BYTES; 0: always
   *   streamed). A caller that caps the body passes less than its cap, so that a body cut off at the
   *   cap has gone through the tokenizer and its whole images are known (`images`, `partialId`).
   */
  constructor(
    private readonly shape: 'listing' | 'image',
    private readonly url = '',
    private readonly wholeBelow = WHOLE_READ_BYTES,
  ) {
    this.imageDepth = shape === 'listing' ? 2 : 0;
  }

  /** The id of the image being read when the body was cut off, if its id came before the cut. */
  get partialId(): string | undefined {
    const id = this.image?.id;
    return typeof id === 'string' ? id.slice(0, 64) : undefined;
  }

  write(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (this.pending !== null && this.bytes < this.wholeBelow) {
      this.pending.push(chunk);
      return;
    }
    this.stream();
    this.unreadable(() => this.tokenizer.write(chunk));
  }

  end(): void {
    if (this.pending !== null && this.readWhole(this.pending)) return;
    this.stream();
    this.unreadable(() => {
      this.tokenizer.end();
      if (!this.complete) throw new Error('the JSON body ended before its last value did');
    });
  }

  /** From now on the body streams: what was held goes through the tokenizer first. */
  private stream(): void {
    const pending = this.pending;
    if (pending === null) return;
    this.pending = null;
    for (const chunk of pending) this.unreadable(() => this.tokenizer.write(chunk));
  }

  /**
   * The whole body through JSON.parse, kept as the tokenizer would keep it (the same fields, the
   * same stand-ins). False when JSON.parse refuses it: the tokenizer then reads it, and says where
   * it goes wrong in its own words.
   */
  private readWhole(chunks: Buffer[]): boolean {
    let root: unknown;
    try {
      root = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      return false;
    }
    this.pending = null;
    this.complete = true;
    if (this.shape === 'image') {
      this.images.push(keptImage(root));
      return true;
    }
    if (!isObject(root)) return true;
    const { images, next } = root as { images?: unknown; next?: unknown };
    this.hasImages = Array.isArray(images);
    if (Array.isArray(images)) for (const image of images) this.images.push(keptImage(image));
    if ('next' in root) this.next = keptValue(next);
    return true;
  }

  private unreadable(step: () => void): void {
    try {
      step();
    } catch (error) {
      const url = displayUrl(this.url);
      throw new OpenStackHttpError(
        'glance',
        'GET',
        url,
        200,
        `glance: GET ${url} answered a body the enforcer cannot read as JSON (${(error as Error).message.slice(0, 200)}); is the image endpoint really Glance v2?`,
      );
    }
  }

  /** Keys of the root and of an image, and the values of KEPT_FIELDS and `next`: nothing else is decoded. */
  wantString(): boolean {
    const top = this.open.at(-1);
    const depth = this.open.length;
    if (!top) return false;
    const inImage = this.image !== undefined && depth === this.imageDepth + 1;
    if (top.object && top.expectKey) return depth === 1 || inImage;
    if (inImage) return KEPT_FIELDS.has(top.key!);
    return this.imageDepth === 2 && depth === 1 && top.key === 'next';
  }

  token(token: Token, value?: string | number): void {
    if (this.complete) throw new Error('the JSON body goes on after its value');
    const open = this.open;
    const depth = open.length;
    const top = depth > 0 ? open[depth - 1] : undefined;
    if (token === Token.Colon) return;
    if (token === Token.Comma) {
      if (top?.object) top.expectKey = true;
      return;
    }
    if (token === Token.EndObject || token === Token.EndArray) {
      // The tokenizer checks words, not grammar: the nesting is checked here, the rest is Glance's JSON encoder's.
      if (!top || top.object !== (token === Token.EndObject))
        throw new Error(`the JSON body closes a ${token === Token.EndObject ? 'brace' : 'bracket'} it did not open`);
      open.pop();
      if (depth - 1 === this.imageDepth && this.image) {
        this.images.push(this.image);
        this.image = undefined;
      }
      if (depth === 1) this.complete = true;
      return;
    }
    if (top?.expectKey) {
      if (token !== Token.String) throw new Error('the JSON body has an object key that is not a string');
      top.key = value as string | undefined;
      top.expectKey = false;
      return;
    }
    if (this.image !== undefined && depth === this.imageDepth + 1) {
      const key = top!.key;
      if (key !== undefined && KEPT_FIELDS.has(key)) this.image[key] = standIn(token, value);
    } else if (depth === this.imageDepth && this.inImages()) {
      if (token === Token.BeginObject) this.image = {};
      else this.images.push(standIn(token, value));
    } else if (this.imageDepth === 2 && depth === 1) {
      if (top!.key === 'images') this.hasImages = token === Token.BeginArray;
      else if (top!.key === 'next') this.next = standIn(token, value);
    }
    if (token === Token.BeginObject || token === Token.BeginArray) open.push({ object: token === Token.BeginObject, expectKey: token === Token.BeginObject });
    else if (depth === 0) this.complete = true;
  }

  /** The value about to start is an element of a listing's `images` (or the root, for a GET). */
  private inImages(): boolean {
    if (this.imageDepth === 0) return true;
    const [root, list] = this.open;
    return root!.object && root!.key === 'images' && !list!.object;
  }
}
