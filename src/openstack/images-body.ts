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

interface OpenContainer {
  object: boolean;
  /** The key whose value comes next (objects). */
  key?: string;
  expectKey: boolean;
}

/**
 * A Glance body (`{"images": [...], "next": ...}` for a listing, the image object itself for a GET)
 * read token by token as it streams in. It keeps only KEPT_FIELDS of each image and `next`: a
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

  constructor(
    shape: 'listing' | 'image',
    private readonly url = '',
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
    this.unreadable(() => this.tokenizer.write(chunk));
  }

  end(): void {
    this.unreadable(() => {
      this.tokenizer.end();
      if (!this.complete) throw new Error('the JSON body ended before its last value did');
    });
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
