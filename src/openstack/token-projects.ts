import { createHash } from 'node:crypto';
import type { SubjectToken } from './keystone.js';

export interface TokenProjectsOptions {
  /** Entries kept at most; the least recently used goes first. */
  maxEntries?: number;
  /** Longest a valid token's project is believed without asking Keystone again. */
  maxAgeMs?: number;
  /** How long a token Keystone did not know stays unknown: a flood of made-up tokens costs one call each per this. */
  unknownAgeMs?: number;
  now?: () => number;
}

interface Entry {
  token: SubjectToken | undefined;
  untilMs: number;
}

/**
 * Token -> project for the admission endpoint, cached by the SHA-256 of the token (the cache
 * never holds a token), until min(5 minutes, the token's expiry), bounded, with concurrent misses
 * for one token merged into one Keystone call. A revoked token keeps its project here for at most
 * the 5 minutes: it only decides which project's quota a create counts against, and Glance itself
 * refuses the revoked token.
 *
 * @example
 *   const tokens = new TokenProjects((t) => keystone.validateToken(t));
 *   const owner = await tokens.lookup(request.headers['x-auth-token']); // undefined: unknown token
 */
export class TokenProjects {
  private readonly entries = new Map<string, Entry>();
  private readonly pending = new Map<string, Promise<SubjectToken | undefined>>();
  private readonly maxEntries: number;
  private readonly maxAgeMs: number;
  private readonly unknownAgeMs: number;
  private readonly now: () => number;
  hits = 0;
  misses = 0;

  constructor(
    private readonly validate: (token: string) => Promise<SubjectToken | undefined>,
    options: TokenProjectsOptions = {},
  ) {
    this.maxEntries = options.maxEntries ?? 10_000;
    this.maxAgeMs = options.maxAgeMs ?? 300_000;
    this.unknownAgeMs = options.unknownAgeMs ?? 10_000;
    this.now = options.now ?? Date.now;
  }

  /** What Keystone says of `token` (from the cache when it can); undefined for a token it does not know. */
  async lookup(token: string): Promise<SubjectToken | undefined> {
    const key = createHash('sha256').update(token).digest('base64');
    const cached = this.entries.get(key);
    const now = this.now();
    if (cached && now < cached.untilMs) {
      this.hits++;
      // Re-inserted: the map's order is least recently used first.
      this.entries.delete(key);
      this.entries.set(key, cached);
      return cached.token;
    }
    const inFlight = this.pending.get(key);
    if (inFlight) {
      this.hits++;
      return inFlight;
    }
    this.misses++;
    const request = this.validate(token).finally(() => this.pending.delete(key));
    this.pending.set(key, request);
    const result = await request;
    const untilMs = result ? Math.min(this.now() + this.maxAgeMs, result.expiresAtMs) : this.now() + this.unknownAgeMs;
    this.entries.delete(key);
    this.entries.set(key, { token: result, untilMs });
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value as string);
    return result;
  }

  get size(): number {
    return this.entries.size;
  }
}
