/**
 * A JSON tokenizer over a byte stream that decodes a string only when its reader wants it. A
 * Glance listing is mostly strings the enforcer never reads (a tenant's extra properties, MBs of
 * them); those are skipped by searching for their closing quote (`indexOf`, no decoding, nothing
 * kept), which is what makes a streamed listing about as fast as `JSON.parse` of the whole body
 * (bench/README.md, `bench:listing`). The grammar (which token may follow which) is left to the
 * reader: Glance's JSON encoder writes the body, this only has to be right on valid JSON and
 * refuse what it cannot tokenize.
 */

export const Token = {
  BeginObject: 0,
  EndObject: 1,
  BeginArray: 2,
  EndArray: 3,
  Colon: 4,
  Comma: 5,
  String: 6,
  Number: 7,
  True: 8,
  False: 9,
  Null: 10,
} as const;
export type Token = (typeof Token)[keyof typeof Token];

export interface TokenReader {
  /** Asked at each opening quote: decode this string (key or value)? If not, its token has no value. */
  wantString(): boolean;
  token(token: Token, value?: string | number): void;
}

// biome-ignore lint/suspicious/noConstEnum: file-local, so tsc and esbuild both inline it in the byte loop; nothing imports it
const enum State {
  Between,
  InString,
  InNumber,
  InLiteral,
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/;
const NONE = -1;
/** The token of each ASCII byte that is one on its own, NONE for the others. */
const PUNCTUATION: Int8Array = (() => {
  const table = new Int8Array(128).fill(NONE);
  table[0x7b] = Token.BeginObject;
  table[0x7d] = Token.EndObject;
  table[0x5b] = Token.BeginArray;
  table[0x5d] = Token.EndArray;
  table[0x3a] = Token.Colon;
  table[0x2c] = Token.Comma;
  return table;
})();

function isNumberByte(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2b || c === 0x2e || c === 0x45 || c === 0x65;
}

function isLetter(c: number): boolean {
  return c >= 0x61 && c <= 0x7a;
}

export class JsonTokenizer {
  private state = State.Between;
  /** The bytes so far of a string being decoded (copies: a chunk is not held for a short string). */
  private parts: Buffer[] = [];
  private decoding = false;
  /** The previous chunk ended inside a string on a backslash: this chunk's first byte is escaped. */
  private escapeNext = false;
  /** The string so far has no escape and no control character: its bytes are its value. */
  private plain = true;
  /** A number or a literal so far. */
  private text = '';
  private offset = 0;

  constructor(private readonly reader: TokenReader) {}

  write(chunk: Buffer): void {
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.state === State.InString) {
        i = this.string(chunk, i);
        continue;
      }
      if (this.state === State.InNumber) {
        let j = i;
        while (j < n && isNumberByte(chunk[j]!)) j++;
        this.text += chunk.toString('latin1', i, j);
        if (j < n) this.endNumber();
        i = j;
        continue;
      }
      if (this.state === State.InLiteral) {
        let j = i;
        while (j < n && isLetter(chunk[j]!) && j - i + this.text.length <= 5) j++;
        this.text += chunk.toString('latin1', i, j);
        if (j < n) this.endLiteral();
        i = j;
        continue;
      }
      const c = chunk[i]!;
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
        i++;
        continue;
      }
      const punctuation = c < 0x80 ? PUNCTUATION[c]! : NONE;
      if (punctuation !== NONE) {
        i++;
        this.reader.token(punctuation as Token);
      } else if (c === QUOTE) {
        i++;
        this.state = State.InString;
        this.decoding = this.reader.wantString();
        this.parts = [];
        this.escapeNext = false;
        this.plain = true;
      } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
        this.state = State.InNumber;
        this.text = '';
      } else if (c === 0x74 || c === 0x66 || c === 0x6e) {
        this.state = State.InLiteral;
        this.text = '';
      } else {
        throw new Error(`unexpected ${JSON.stringify(String.fromCharCode(c))} at byte ${this.offset + i}`);
      }
    }
    this.offset += n;
  }

  /** The body is complete: a number at its very end ends here. */
  end(): void {
    if (this.state === State.InNumber) this.endNumber();
    else if (this.state === State.InLiteral) this.endLiteral();
    else if (this.state === State.InString) throw new Error('the body ends inside a string');
  }

  /** Reads on in a string from `start`; returns where the string ends (after its quote), or the chunk's end. */
  private string(chunk: Buffer, start: number): number {
    const n = chunk.length;
    let i = start;
    if (this.escapeNext) {
      i++;
      this.escapeNext = false;
    }
    // Keys, ids and dates are short: a byte loop is cheaper than a call into indexOf for them.
    const shortEnd = Math.min(n, i + 64);
    while (i < shortEnd) {
      const c = chunk[i]!;
      if (c === QUOTE) return this.endString(chunk, start, i);
      if (c === BACKSLASH) {
        this.plain = false;
        i += 2;
        continue;
      }
      if (c < 0x20) this.plain = false;
      i++;
    }
    // A long string (a tenant's property): its quotes are found by indexOf; one after an odd run
    // of backslashes is escaped. `i` is never inside an escape, so runs are counted back to it.
    this.plain = false;
    let floor = i;
    for (;;) {
      const quote = floor < n ? chunk.indexOf(QUOTE, floor) : -1;
      const stop = quote === -1 ? n : quote;
      let k = stop;
      while (k > floor && chunk[k - 1] === BACKSLASH) k--;
      const odd = (stop - k) % 2 === 1;
      if (quote === -1) {
        // An odd run at the chunk's end escapes the next chunk's first byte; one past it already did.
        this.escapeNext = floor > n || odd;
        if (this.decoding) this.parts.push(Buffer.from(chunk.subarray(start)));
        return n;
      }
      if (!odd) return this.endString(chunk, start, quote);
      floor = quote + 1;
    }
  }

  private endString(chunk: Buffer, start: number, quote: number): number {
    let value: string | undefined;
    if (this.decoding) {
      if (this.plain && this.parts.length === 0) {
        value = chunk.toString('utf8', start, quote);
      } else {
        this.parts.push(chunk.subarray(start, quote));
        // JSON.parse resolves the escapes and refuses raw control characters, as a JSON parser must.
        value = JSON.parse(`"${Buffer.concat(this.parts).toString('utf8')}"`) as string;
      }
      this.parts = [];
    }
    this.state = State.Between;
    this.reader.token(Token.String, value);
    return quote + 1;
  }

  private endNumber(): void {
    this.state = State.Between;
    if (!NUMBER.test(this.text)) throw new Error(`'${this.text.slice(0, 40)}' is not a number`);
    this.reader.token(Token.Number, Number(this.text));
  }

  private endLiteral(): void {
    this.state = State.Between;
    const token = this.text === 'true' ? Token.True : this.text === 'false' ? Token.False : this.text === 'null' ? Token.Null : undefined;
    if (token === undefined) throw new Error(`'${this.text.slice(0, 40)}' is not true, false or null`);
    this.reader.token(token);
  }
}
