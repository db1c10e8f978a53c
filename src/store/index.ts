import { ConfigError } from '../errors.js';
import { redactUrl } from '../redact.js';
import type { LedgerStore } from './port.js';

export type { LedgerStore } from './port.js';

export interface OpenStoreOptions {
  /** REDIS_KEY_PREFIX: where a redis:// ledger's keys start. */
  redisKeyPrefix?: string;
}

const FORMS = 'sqlite://./data/glance-quota.db, postgres://user:pass@host:5432/db, redis://[:pass@]host:6379[/db] or memory://';

/** The scheme of a STORE_URL, lower-cased: `sqlite`, `postgres`, `redis`, `memory`, ... */
export function storeScheme(url: string): string | undefined {
  return /^([a-z][a-z0-9+]*):\/\//i.exec(url)?.[1]?.toLowerCase();
}

/**
 * STORE_URL to a store. Each adapter is imported only when its scheme is asked for: a process
 * loads one store's driver, never the others'. The functions need this most: a function bundle
 * holds no better-sqlite3 (a native addon built for one Node ABI), and a cold start on Redis
 * does not parse pg. `sqlite://./rel.db` and `sqlite:///abs.db` as SQLAlchemy writes them
 * (oslo.db's `connection` option), so operators can reuse what they know; `postgres://` and
 * `postgresql://` as libpq takes them; `redis://` and `rediss://` (TLS) as redis-cli does.
 */
export async function openStore(url: string, options: OpenStoreOptions = {}): Promise<LedgerStore> {
  const scheme = storeScheme(url);
  if (scheme === 'memory') return new (await import('./memory.js')).MemoryStore();
  if (scheme === 'sqlite') {
    const path = url.slice('sqlite://'.length);
    if (!path) throw new ConfigError(`STORE_URL: no file in '${url}'; for example sqlite://./data/glance-quota.db`);
    return (await import('./sqlite.js')).SqliteStore.open(path);
  }
  if (scheme === 'postgres' || scheme === 'postgresql') return (await import('./postgres.js')).PostgresStore.open(url);
  if (scheme === 'redis' || scheme === 'rediss') return (await import('./redis.js')).RedisStore.open(url, { keyPrefix: options.redisKeyPrefix });
  throw new ConfigError(`STORE_URL: unsupported store '${redactUrl(url)}'; use ${FORMS}`);
}
