import { ConfigError } from '../config.js';
import { MemoryStore } from './memory.js';
import type { LedgerStore } from './port.js';
import { SqliteStore } from './sqlite.js';

export type { LedgerStore } from './port.js';

/**
 * STORE_URL to a store. `sqlite://./rel.db` and `sqlite:///abs.db` as SQLAlchemy writes them
 * (oslo.db's `connection` option), so operators can reuse what they know.
 */
export async function openStore(url: string): Promise<LedgerStore> {
  const scheme = /^([a-z][a-z0-9+]*):\/\//i.exec(url)?.[1]?.toLowerCase();
  if (scheme === 'memory') return new MemoryStore();
  if (scheme === 'sqlite') {
    const path = url.slice('sqlite://'.length);
    if (!path) throw new ConfigError(`STORE_URL: no file in '${url}'; for example sqlite://./data/glance-quota.db`);
    return SqliteStore.open(path);
  }
  throw new ConfigError(
    `STORE_URL: unsupported store '${url.replace(/\/\/[^@/]*@/, '//***@')}'; use sqlite://./data/glance-quota.db or memory://`,
  );
}
