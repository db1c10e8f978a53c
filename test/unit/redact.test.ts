import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { forgetSecrets, printable, redactUrl, rememberSecrets, rememberToken, scrub, urlPasswords } from '../../src/redact.js';
import { parseTransportUrl } from '../../src/transport/transport-url.js';

/** A password that breaks every naive scrub: quotes, backslashes, URL delimiters, a space. */
const PASSWORD = 'p"a\\s/s,w?o#r@d x';
const TOKEN = 'gAAAAABnZ3F1aXRlLWEtbG9uZy1mZXJuZXQtdG9rZW4tZm9yLXRlc3Rz';

/** No run of 4 characters of the password is left (a password cut at a delimiter leaks in parts). */
function expectNoPart(text: string, secret = PASSWORD): void {
  for (let i = 0; i + 4 <= secret.length; i++) {
    const part = secret.slice(i, i + 4);
    if (/^[\w]+$/.test(part) && !/pass|word/.test(part)) expect(text, `leaks '${part}'`).not.toContain(part);
  }
  expect(text).not.toContain(secret);
}

afterEach(() => forgetSecrets());

describe('URLs are redacted, even when they do not parse', () => {
  it.each([
    ['rabbit://gqe:se/cret@10.0.0.1:5672/openstack', 'rabbit://gqe:***@10.0.0.1:5672/openstack'],
    ['rabbit://gqe:se,cret@10.0.0.1:5672,gqe:x/y@10.0.0.2/v', 'rabbit://gqe:***@10.0.0.1:5672,gqe:***@10.0.0.2/v'],
    ['rabbit://a:s1@h1:5672,b:s2@h2/v', 'rabbit://a:***@h1:5672,b:***@h2/v'],
    [
      'postgres://gqe:p@ss?w#rd@db.example.com:5432/gqe?sslpassword=k3y&application_name=gqe',
      'postgres://gqe:***@db.example.com:5432/gqe?sslpassword=***&application_name=gqe',
    ],
    ['redis://:s3cret@[::1]:6379/2', 'redis://:***@[::1]:6379/2'],
    ['https://keystone.example.com:5000/v3', 'https://keystone.example.com:5000/v3'],
    ['https://glance/v2/images?owner=p1&marker=a', 'https://glance/v2/images?owner=p1&marker=a'],
  ])('%s', (url, shown) => {
    expect(redactUrl(url)).toBe(shown);
  });

  it.each([
    `rabbit://gqe:${PASSWORD}@10.0.0.1:5672/openstack`,
    `rabbit://gqe:${PASSWORD}@10.0.0.1:99999/openstack`,
    `rabbit://gqe:${encodeURIComponent(PASSWORD)}%zz@10.0.0.1:5672/openstack`,
    `rabbit://gqe:${PASSWORD}@`,
    `rabbit://gqe:pa/ss@host:5672:junk/`,
  ])('the TRANSPORT_URL error for %s never prints the password, in whole or in part', (url) => {
    let message = '';
    try {
      parseTransportUrl(url);
      message = 'parsed';
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/^TRANSPORT_URL: |^parsed$/);
    expectNoPart(message);
    expect(message).not.toContain('pa/ss');
  });

  it('finds the passwords to remember in every host of a URL, decoded too', () => {
    expect(urlPasswords('rabbit://a:p%40ss@h1:5672,b:q/r@h2/v')).toEqual(['p%40ss', 'p@ss', 'q/r']);
    expect(urlPasswords('postgres://u@h/db?password=pw1')).toEqual(['pw1']);
  });
});

describe('secrets are scrubbed from server text in any escaping', () => {
  const spellings = {
    raw: PASSWORD,
    json: JSON.stringify(PASSWORD),
    'json in json': JSON.stringify(JSON.stringify({ password: PASSWORD })),
    'url-encoded': encodeURIComponent(PASSWORD),
    'url-encoded, lower-case hex': encodeURIComponent(PASSWORD).replace(/%[0-9A-F]{2}/g, (h) => h.toLowerCase()),
    html: PASSWORD.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;'),
  };
  it.each(Object.entries(spellings))('%s', (_, spelled) => {
    rememberSecrets(PASSWORD);
    const text = `403 Forbidden: request {"auth": "${spelled}"} was refused`;
    const out = scrub(text);
    expectNoPart(out);
    expect(out).toContain('[REDACTED]');
    expect(out).toMatch(/^403 Forbidden: request/);
  });

  it('scrubs tokens: remembered, by the name they come under, and Fernet-shaped ones', () => {
    rememberToken('tok-1234-remembered');
    expect(scrub('a tok-1234-remembered b')).toBe('a [REDACTED] b');
    expect(scrub('X-Auth-Token: abcdef0123456789 was refused')).not.toContain('abcdef0123456789');
    expect(scrub('{\\"password\\": \\"hunter2-unknown\\"}')).not.toContain('hunter2');
    expect(scrub(`header ${TOKEN} invalid`)).toBe('header [REDACTED] invalid');
    // An ordinary sentence about tokens keeps its words.
    expect(scrub('the token is invalid; {"token": {"expires_at": "x"}}')).toBe('the token is invalid; {"token": {"expires_at": "x"}}');
  });

  it('keeps only the last few tokens, so a long run does not grow the list forever', () => {
    for (let i = 0; i < 20; i++) rememberToken(`token-number-${i}-xyz`);
    expect(scrub('token-number-19-xyz')).toBe('[REDACTED]');
    expect(scrub('old token-number-0-xyz')).toBe('old token-number-0-xyz');
  });

  it('scrubs every field of a log line and its message', () => {
    rememberSecrets(PASSWORD);
    const chunks: string[] = [];
    const log = createLogger(
      'info',
      new Writable({
        write: (c: Buffer, _e, done) => {
          chunks.push(c.toString());
          done();
        },
      }),
    );
    log.warn(
      { err: `connect failed for postgres://gqe:${PASSWORD}@db/x`, nested: { reason: JSON.stringify(PASSWORD) }, error: new Error(`bad ${PASSWORD}`) },
      `echo ${PASSWORD}`,
    );
    const line = chunks.join('');
    expectNoPart(line);
    expectNoPart(JSON.parse(line).nested.reason);
    expect(line).toContain('[REDACTED]');
  });
});

describe('text for a terminal', () => {
  it('escapes control characters, C1 included, and bidirectional overrides', () => {
    expect(printable('img-\u001b[2J\u001b]0;pwned\u0007')).toBe('img-\\x1b[2J\\x1b]0;pwned\\x07');
    expect(printable('a\u009b31mb\nc\rd')).toBe('a\\x9b31mb\\x0ac\\x0dd');
    expect(printable('evil\u202egpj.exe')).toBe('evil\\u202egpj.exe');
    expect(printable('615696c5-4278-4834-ac46-630e5a22dbe3 ünï😀')).toBe('615696c5-4278-4834-ac46-630e5a22dbe3 ünï😀');
  });
});
