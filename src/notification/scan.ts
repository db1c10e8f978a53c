import { JsonTokenizer, Token, type TokenReader } from '../json-stream.js';

/**
 * How far into a body too large to parse the bounded scan reads. Glance writes the fields a
 * ledger event needs (message_id, event_type, priority, then the payload's id, name, status,
 * created_at, updated_at, protected, checksum, owner, size...) before the extra properties a
 * tenant can make as large as it likes (glance/notifier.py format_image_notification; the
 * envelope's JSON keeps that order). A name is at most 255 characters, so all of them sit well
 * within the first few KiB, however fat the properties that follow.
 */
export const SCAN_BYTES = 64 * 1024;

/** The part of an oslo message a bounded scan read: enough to build a ledger event. */
export interface ScannedMessage {
  message_id?: unknown;
  event_type?: unknown;
  priority?: unknown;
  payload: Record<string, unknown>;
}

const MESSAGE_FIELDS = ['message_id', 'event_type', 'priority'];
const PAYLOAD_FIELDS = ['id', 'owner', 'status', 'size', 'created_at', 'updated_at', 'deleted_at', 'deleted', 'protected'];

/**
 * The message fields and image payload fields found in the first SCAN_BYTES of a body, without
 * decoding the rest: a body over MAX_MESSAGE_BYTES is still a trigger (a tenant must not hide its
 * creates behind megabytes of properties). Both forms: the messagingv2 envelope (the message a
 * JSON string inside it, decoded here only as far as the scan reaches) and the bare message.
 * Undefined when the prefix holds no JSON object where one is expected; fields it did not reach
 * are absent. Never throws.
 *
 * @example
 *   scanMessage(hugeBody) // { message_id: '...', event_type: 'image.create', priority: 'INFO', payload: { id, owner, status, created_at, ... } }
 */
export function scanMessage(body: Uint8Array | string): ScannedMessage | undefined {
  const bytes = typeof body === 'string' ? Buffer.from(body.slice(0, SCAN_BYTES), 'utf8') : body;
  const prefix = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, SCAN_BYTES)).toString('utf8');
  const start = stringValueStart(prefix, 'oslo.message');
  const inner = start === undefined ? prefix : decodeStringPrefix(prefix, start);
  return inner === undefined ? undefined : pickFields(inner);
}

/** The fields of the (possibly cut) message text, by a streaming parse that stops at the cut. */
function pickFields(text: string): ScannedMessage | undefined {
  const reader = new FieldPicker();
  try {
    new JsonTokenizer(reader).write(Buffer.from(text, 'utf8'));
  } catch {
    // The cut, or what follows it: what was read before stands.
  }
  return reader.seen ? reader.found : undefined;
}

const LITERALS: Partial<Record<Token, boolean | null>> = { [Token.True]: true, [Token.False]: false, [Token.Null]: null };

/**
 * Keeps the scalar values at `$.<message field>` and `$.payload.<payload field>`; decodes no other
 * value (a tenant's properties are skipped, not read).
 */
class FieldPicker implements TokenReader {
  readonly found: ScannedMessage = { payload: {} };
  seen = false;
  /** One entry per open container: for an object, its current key and whether a key comes next. */
  private readonly stack: { object: boolean; key?: string; expectKey: boolean }[] = [];

  wantString(): boolean {
    const top = this.stack.at(-1);
    return top !== undefined && ((top.object && top.expectKey) || this.wanted() !== undefined);
  }

  token(token: Token, value?: string | number): void {
    const top = this.stack.at(-1);
    switch (token) {
      case Token.BeginObject:
      case Token.BeginArray:
        this.stack.push({ object: token === Token.BeginObject, expectKey: token === Token.BeginObject });
        return;
      case Token.EndObject:
      case Token.EndArray:
        this.stack.pop();
        return;
      case Token.Colon:
        if (top) top.expectKey = false;
        return;
      case Token.Comma:
        if (top?.object) top.expectKey = true;
        return;
      case Token.String:
        if (top?.object && top.expectKey) {
          top.key = value as string;
          return;
        }
        this.keep(value);
        return;
      case Token.Number:
        this.keep(value);
        return;
      default:
        this.keep(LITERALS[token]);
    }
  }

  /** Where a scalar value at the current position goes, if anywhere. */
  private wanted(): { into: Record<string, unknown>; key: string } | undefined {
    const [message, payload, deeper] = this.stack;
    if (deeper || !message?.object || message.expectKey) return undefined;
    if (!payload)
      return message.key && MESSAGE_FIELDS.includes(message.key) ? { into: this.found as unknown as Record<string, unknown>, key: message.key } : undefined;
    if (message.key !== 'payload' || !payload.object || payload.expectKey) return undefined;
    return payload.key && PAYLOAD_FIELDS.includes(payload.key) ? { into: this.found.payload, key: payload.key } : undefined;
  }

  private keep(value: unknown): void {
    const at = this.wanted();
    if (!at) return;
    at.into[at.key] = value;
    this.seen = true;
  }
}

/**
 * The index of the opening quote of a top-level key's string value in a (possibly cut) JSON
 * object text, or undefined: the envelope `{"oslo.version": "2.0", "oslo.message": "..."}`.
 */
function stringValueStart(text: string, wanted: string): number | undefined {
  let i = skipSpace(text, 0);
  if (text[i] !== '{') return undefined;
  i++;
  for (;;) {
    i = skipSpace(text, i);
    if (text[i] !== '"') return undefined;
    const keyEnd = stringEnd(text, i);
    if (keyEnd === undefined) return undefined;
    let key: unknown;
    try {
      key = JSON.parse(text.slice(i, keyEnd + 1));
    } catch {
      return undefined;
    }
    i = skipSpace(text, keyEnd + 1);
    if (text[i] !== ':') return undefined;
    i = skipSpace(text, i + 1);
    if (key === wanted) return text[i] === '"' ? i : undefined;
    // Another key: the bare message's first key, or the envelope's version. Only a short string
    // value is stepped over; anything else means this is not the envelope.
    if (text[i] !== '"') return undefined;
    const valueEnd = stringEnd(text, i);
    if (valueEnd === undefined) return undefined;
    i = skipSpace(text, valueEnd + 1);
    if (text[i] !== ',') return undefined;
    i++;
  }
}

/** Index of the closing quote of the JSON string opening at `open`, or undefined past the text. */
function stringEnd(text: string, open: number): number | undefined {
  for (let i = open + 1; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x5c) i++;
    else if (c === 0x22) return i;
  }
  return undefined;
}

function skipSpace(text: string, i: number): number {
  while (i < text.length && (text[i] === ' ' || text[i] === '\n' || text[i] === '\r' || text[i] === '\t')) i++;
  return i;
}

/**
 * The decoded content of the JSON string opening at `open`, as far as the text reaches: a cut
 * escape at the end is dropped, then the rest is decoded by JSON.parse itself.
 */
function decodeStringPrefix(text: string, open: number): string | undefined {
  const close = stringEnd(text, open);
  let raw = text.slice(open + 1, close ?? text.length);
  if (close === undefined) {
    const backslashes = /\\*$/.exec(raw)![0].length;
    if (backslashes % 2 === 1) raw = raw.slice(0, -1);
    raw = raw.replace(/(?<!\\)((?:\\\\)*)\\u[0-9a-fA-F]{0,3}$/, '$1');
  }
  try {
    return JSON.parse(`"${raw}"`) as string;
  } catch {
    return undefined;
  }
}
