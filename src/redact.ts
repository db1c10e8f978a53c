/**
 * The one place that makes text safe to show: every URL redactor, every secret scrub and the
 * terminal escaping of the enforcer go through here. Text from Glance, Keystone, the broker or a
 * store may echo a token or a password (a 403 page quoting `X-Auth-Token`, a driver error quoting
 * its connection string), and an id in a forged notification may carry terminal escape
 * sequences; neither may reach a log, the audit table, an error, a notification or a terminal.
 */

const MASK = '***';
const REDACTED = '[REDACTED]';

/**
 * Secrets the process holds (OS_PASSWORD, the application credential secret, broker and store
 * passwords): `scrub` removes them from any text, whoever calls it. Tokens are kept apart and
 * bounded: a long-running consumer gets a new one every hour or so, and only the last few can
 * still be echoed by a server.
 */
const known = new Set<string>();
const tokens: string[] = [];
const MAX_TOKENS = 8;
let cachedSpellings: string[] | undefined;

/** Very short values would blank out ordinary words; no real password or token is that short. */
const MIN_SECRET_LENGTH = 4;

/**
 * Adds secrets `scrub` removes from then on, for the life of the process.
 *
 * @example
 *   rememberSecrets(process.env.OS_PASSWORD);
 */
export function rememberSecrets(...secrets: readonly (string | undefined | null)[]): void {
  for (const s of secrets) {
    if (!s || s.length < MIN_SECRET_LENGTH || known.has(s)) continue;
    known.add(s);
    cachedSpellings = undefined;
  }
}

/** Adds a token Keystone issued; the oldest of more than MAX_TOKENS is forgotten. */
export function rememberToken(token: string): void {
  if (token.length < MIN_SECRET_LENGTH || tokens.includes(token)) return;
  tokens.push(token);
  if (tokens.length > MAX_TOKENS) tokens.shift();
  cachedSpellings = undefined;
}

/** Forgets every remembered secret and token (tests). */
export function forgetSecrets(): void {
  known.clear();
  tokens.length = 0;
  cachedSpellings = undefined;
}

const HTML_ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/**
 * The ways a server may echo a secret back: as is, JSON-escaped once or twice (an oslo message is
 * JSON inside JSON), URL-encoded (either hex case, `+` for a space) and HTML-escaped.
 */
function spellings(secret: string): string[] {
  const json = JSON.stringify(secret).slice(1, -1);
  const uri = encodeURIComponent(secret);
  const out = new Set([
    secret,
    json,
    JSON.stringify(json).slice(1, -1),
    uri,
    uri.replace(/%[0-9A-F]{2}/g, (h) => h.toLowerCase()),
    uri.replace(/%20/g, '+'),
    encodeURI(secret),
    secret.replace(/[&<>"']/g, (c) => HTML_ENTITIES[c]!),
    secret.replace(/["\\]/g, '\\$&'),
  ]);
  return [...out].filter((s) => s.length >= MIN_SECRET_LENGTH);
}

/**
 * Values that are secrets by the name they come under, whatever their value: `"password": "..."`,
 * `X-Auth-Token: ...`, `token=...`, with or without quotes (escaped ones too). A setting's own
 * name (`token: OS_SYSTEM_SCOPE is not set`) is not a value, nor is an ARN's `:secret:<name>`
 * segment: both are left alone.
 */
/** One of our own settings' names (case-sensitive): an error about it, not a secret. */
const SETTING_NAME = /^(?:OS|STORE|TRANSPORT|REDIS)_[A-Z0-9_]+$/;
const NAMED_SECRET =
  /((?<!:)(?:x-auth-token|x-subject-token|x-service-token|password|passwd|secret|token|api[_-]?key|authorization)\\*["']?\s*[:=]\s*\\*["']?)(?:Bearer\s+|Basic\s+)?(?![{[])((?:\\.|[^\s"'\\,;&<>}])+)/gi;
/** A Keystone Fernet token (or a JWS one) anywhere, even unnamed. */
const FERNET = /\bgAAAAA[A-Za-z0-9_\-=]{20,}/g;
/** A URL inside a longer text: up to whitespace, a quote or an angle bracket. */
const URL_IN_TEXT = /\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>`]+/gi;

/**
 * `text` without any secret: the remembered ones and `extra` in every spelling, values named as
 * secrets, Keystone tokens, and the passwords of every URL in it.
 *
 * @example
 *   scrub('{"error": "token gAAAAAB... is invalid for user \\"admin\\" with password \\"p\\\\\\"w\\""}', [password])
 */
export function scrub(text: string, extra: readonly (string | undefined | null)[] = []): string {
  let out = text;
  // Longest first, so that a secret containing another one is removed whole.
  cachedSpellings ??= longestFirst([...known, ...tokens].flatMap(spellings));
  const given = extra.filter((s): s is string => !!s && s.length >= MIN_SECRET_LENGTH);
  const all = given.length === 0 ? cachedSpellings : longestFirst([...cachedSpellings, ...given.flatMap(spellings)]);
  for (const s of all) if (out.includes(s)) out = out.split(s).join(REDACTED);
  out = out.replace(URL_IN_TEXT, (u) => redactUrl(u));
  out = out.replace(FERNET, REDACTED);
  out = out.replace(NAMED_SECRET, (_, name: string, value: string) =>
    value === REDACTED || value === MASK || SETTING_NAME.test(value) ? `${name}${value}` : `${name}${REDACTED}`,
  );
  return out;
}

function longestFirst(spelled: string[]): string[] {
  return [...new Set(spelled)].sort((a, b) => b.length - a.length);
}

/** A host (name, IPv4 or [IPv6]) and port, as it ends one `user:pass@host:port` entry. */
const HOST_AFTER_AT = /@(\[[^\]\s]*\]|[A-Za-z0-9._-]+)(:\d*)?(?=[,/?#]|$)/g;
const SECRET_PARAM = /pass|secret|token|key|auth|sig|credential/i;

/**
 * A URL fit for a log or an error: every password replaced by `***` (each host of oslo's
 * `rabbit://u:p@h1,u:p@h2/vhost`), and every query value whose name says secret. Works on text
 * that does not parse as a URL: a password with an unencoded `/`, `,`, `?` or `@` is masked up to
 * the last `@host` before the path, so it is never printed, not even in part.
 *
 * @example
 *   redactUrl('rabbit://gqe:pa/ss,w@10.0.0.1:5672,gqe:x@10.0.0.2/openstack') // 'rabbit://gqe:***@10.0.0.1:5672,gqe:***@10.0.0.2/openstack'
 */
export function redactUrl(url: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([\s\S]*)$/i.exec(url);
  if (!m) return url.includes('@') ? `${MASK}@${url.slice(url.lastIndexOf('@') + 1)}` : url;
  const [, scheme, rest] = m as unknown as [string, string, string];
  const { entries, tail: after } = userInfo(rest);
  // A user alone is kept; from a password's first character on, all is masked.
  const authority = entries.map(({ creds, host }) => {
    const colon = creds.indexOf(':');
    return `${colon >= 0 ? `${creds.slice(0, colon)}:${MASK}` : creds}@${host}`;
  });
  let tail = after;
  const q = tail.indexOf('?');
  if (q >= 0) {
    const query = tail
      .slice(q + 1)
      .replace(/(^|&)([^=&#]*)=([^&#]*)/g, (all, sep: string, name: string) => (SECRET_PARAM.test(name) ? `${sep}${name}=${MASK}` : all));
    tail = `${tail.slice(0, q)}?${query}`;
  }
  return `${scheme}${authority.join(',')}${tail}`;
}

/**
 * The `user:pass@host` entries after a URL's `scheme://`, and what follows them. An entry ends
 * at an `@host[:port]` followed by `,` (another entry) or by the path, query, fragment or end
 * (the last one); an `@` anywhere else belongs to a password. With no such end, everything up
 * to the last `@` is taken as one entry's credentials: masked, never shown.
 */
function userInfo(rest: string): { entries: { creds: string; host: string }[]; tail: string } {
  const hosts = [...rest.matchAll(HOST_AFTER_AT)];
  const ends = (h: RegExpMatchArray) => rest.slice(h.index! + h[0].length);
  const lastIndex = hosts.map((h) => /^(?:[/?#]|$)/.test(ends(h))).lastIndexOf(true);
  if (lastIndex < 0) {
    const at = rest.lastIndexOf('@');
    return at < 0 ? { entries: [], tail: rest } : { entries: [{ creds: rest.slice(0, at), host: '' }], tail: rest.slice(at + 1) };
  }
  const entries: { creds: string; host: string }[] = [];
  let start = 0;
  for (const h of hosts.slice(0, lastIndex + 1)) {
    const last = h === hosts[lastIndex];
    if (!last && !ends(h).startsWith(',')) continue; // an '@' inside a password
    entries.push({ creds: rest.slice(start, h.index!), host: `${h[1]}${h[2] ?? ''}` });
    start = h.index! + h[0].length + (last ? 0 : 1);
  }
  return { entries, tail: rest.slice(start) };
}

/**
 * The passwords of a URL (each host's of a multi-host one), decoded and as written, for
 * `rememberSecrets`: found with the same rule `redactUrl` masks by.
 */
export function urlPasswords(url: string): string[] {
  const m = /^[a-z][a-z0-9+.-]*:\/\/([\s\S]*)$/i.exec(url);
  if (!m) return [];
  const out = new Set<string>();
  const { entries, tail } = userInfo(m[1]!);
  for (const { creds } of entries) {
    const colon = creds.indexOf(':');
    if (colon < 0) continue;
    const raw = creds.slice(colon + 1);
    out.add(raw);
    try {
      out.add(decodeURIComponent(raw));
    } catch {
      // Not valid percent-encoding: the raw form is the one that can be echoed.
    }
  }
  for (const [name, value] of new URLSearchParams(tail.split('?')[1] ?? '')) if (SECRET_PARAM.test(name)) out.add(value);
  return [...out];
}

/**
 * Text fit for a terminal: control characters (C0, DEL, C1, and the bidirectional overrides that
 * reorder what is shown) written as escapes, so that a forged id can neither move the cursor,
 * recolour the screen nor fake a line of output.
 *
 * @example
 *   printable('img-\u001b[2Jowned') // 'img-\\x1b[2Jowned'
 */
export function printable(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/**
 * A log line's fields with every string scrubbed (pino's `formatters.log`): a driver's error, a
 * server's reason or a forged id, whatever field it is logged under.
 */
export function scrubFields<T>(value: T, depth = 0): T {
  if (typeof value === 'string') return scrub(value) as T;
  if (depth > 5 || value === null || typeof value !== 'object') return value;
  if (value instanceof Error) {
    const { name, message, stack } = value;
    return { type: name, message: scrub(message), ...(stack ? { stack: scrub(stack) } : {}) } as T;
  }
  if (Array.isArray(value)) return value.map((v) => scrubFields(v, depth + 1)) as T;
  if (Buffer.isBuffer(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = scrubFields(v, depth + 1);
  return out as T;
}
