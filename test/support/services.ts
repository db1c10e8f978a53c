import { loadConfig } from '../../src/config.js';
/**
 * The machine's real services for the contract and integration tests and `bench:stores`:
 * PostgreSQL, Redis and RabbitMQ. Every helper fails loudly, with the command that starts the
 * service, when it is down: these suites never skip. Each test gets a database, key prefix or
 * queue of its own and removes it afterwards.
 *
 * The outage tests stop PostgreSQL and Redis for real. `holdService` is a lock between processes
 * (vitest workers, other runs on the machine) so that a suite using a service never runs while
 * another one has stopped it; `withServiceStopped` always starts the service again and waits until
 * it answers, whatever the test did.
 *
 * No vitest here: bench/stores.ts uses these helpers too.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import pg from 'pg';
import { openStore } from '../../src/store/index.js';
import type { LedgerStore } from '../../src/store/port.js';
import { declareTopology } from '../../src/transport/amqp.js';
import { parseTransportUrl } from '../../src/transport/transport-url.js';

export const POSTGRES_URL = process.env.TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379/0';
export const TRANSPORT_URL = process.env.TEST_TRANSPORT_URL ?? 'rabbit://guest:guest@127.0.0.1:5672/';

export type ServiceName = 'postgres' | 'redis' | 'rabbitmq';

/** How this machine's services are started and stopped (the CI image's own commands). */
export const SERVICE_COMMANDS: Record<ServiceName, { start: string; stop: string; override: string }> = {
  postgres: {
    start: 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start',
    stop: 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main stop',
    override: 'TEST_POSTGRES_URL',
  },
  redis: {
    start: 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log',
    stop: 'redis-cli -h 127.0.0.1 -p 6379 shutdown nosave',
    override: 'TEST_REDIS_URL',
  },
  rabbitmq: { start: 'rabbitmq-server -detached', stop: 'rabbitmqctl stop_app', override: 'TEST_TRANSPORT_URL' },
};

const WHERE: Record<ServiceName, string> = {
  postgres: new URL(POSTGRES_URL).host,
  redis: new URL(REDIS_URL).host,
  rabbitmq: parseTransportUrl(TRANSPORT_URL)[0]!.hostname,
};

/** The error every helper throws for a service that does not answer: what is down, and how to start it. */
export function serviceDown(service: ServiceName, reason: string): Error {
  const { start, override } = SERVICE_COMMANDS[service];
  return new Error(`${service} at ${WHERE[service]} is not reachable (${reason}): start it with \`${start}\`, or set ${override}`);
}

// ---------------------------------------------------------------------------------------------
// Probes

async function probePostgres(): Promise<void> {
  const client = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 3_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
  } finally {
    await client.end().catch(() => {});
  }
}

async function probeRedis(): Promise<void> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, connectTimeout: 3_000 });
  let lastError: Error | undefined;
  redis.on('error', (err: Error) => {
    lastError = err;
  });
  try {
    await redis.connect();
    await redis.ping();
  } catch (err) {
    // connect() only says "Connection is closed."; the socket's own error says why.
    throw lastError ?? err;
  } finally {
    redis.disconnect();
  }
}

async function probeRabbit(): Promise<void> {
  const connection = await amqp.connect(parseTransportUrl(TRANSPORT_URL)[0]!, { timeout: 3_000 });
  await connection.close();
}

const PROBES: Record<ServiceName, () => Promise<void>> = { postgres: probePostgres, redis: probeRedis, rabbitmq: probeRabbit };

/** Resolves when the service answers; otherwise the loud error, with the start command. */
export async function requireService(service: ServiceName): Promise<void> {
  try {
    await PROBES[service]();
  } catch (err) {
    throw serviceDown(service, (err as Error).message);
  }
}

export async function requireServices(...services: ServiceName[]): Promise<void> {
  for (const s of services) await requireService(s);
}

async function answers(service: ServiceName): Promise<boolean> {
  return PROBES[service]().then(
    () => true,
    () => false,
  );
}

// ---------------------------------------------------------------------------------------------
// A lock between processes around a service, for the outage tests

const LOCK_DIR = process.env.GQE_TEST_LOCK_DIR ?? tmpdir();

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Waits for, then holds, the machine-wide lock on a service; resolves to its release. Every suite
 * that uses PostgreSQL or Redis holds it, and so does the test that stops the service, so a
 * 10-second outage never lands in another suite. A lock left by a dead process is taken over.
 *
 * @example
 *   const release = await holdService('postgres');
 *   try { ... } finally { release(); }
 */
export async function holdService(service: ServiceName, timeoutMs = 300_000): Promise<() => void> {
  const dir = join(LOCK_DIR, `gqe-test-service-${service}.lock`);
  const token = `${process.pid}:${randomBytes(6).toString('hex')}`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, 'owner'), token);
      return () => {
        try {
          if (readFileSync(join(dir, 'owner'), 'utf8') === token) rmSync(dir, { recursive: true, force: true });
        } catch {
          // already gone
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let owner = '';
    try {
      owner = readFileSync(join(dir, 'owner'), 'utf8');
    } catch {
      // being created or released right now
    }
    const pid = Number(owner.split(':')[0]);
    if (owner && !isAlive(pid)) {
      rmSync(dir, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) throw new Error(`${service}: the test lock ${dir} is still held by process ${owner || '?'} after ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}

// ---------------------------------------------------------------------------------------------
// Stopping a service for real

const run = promisify(execFile);

async function shell(command: string): Promise<void> {
  await run('bash', ['-c', command], { timeout: 60_000 });
}

async function waitFor(service: ServiceName, up: boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await answers(service)) !== up) {
    if (Date.now() > deadline) throw new Error(`${service} is still ${up ? 'down' : 'up'} after ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

export interface Outage {
  /** performance.now() when the service was seen down. */
  downAt: number;
  /** performance.now() just before it was started again. */
  restartAt: number;
}

/**
 * Stops the service, waits until it no longer answers, keeps it down for `downMs` while `during`
 * runs (it gets the moment the service was seen down), then starts it again and waits until it
 * answers. The restart happens in a `finally`: a failing test still leaves the service running,
 * or fails loudly saying it could not.
 */
export async function withServiceStopped(
  service: ServiceName,
  downMs: number,
  during: (outage: Pick<Outage, 'downAt'>) => Promise<void> = async () => {},
): Promise<Outage> {
  if (service === 'rabbitmq') throw new Error('withServiceStopped: RabbitMQ is never stopped by these tests');
  const { start, stop } = SERVICE_COMMANDS[service];
  let downAt = Number.NaN;
  let restartAt = Number.NaN;
  try {
    await shell(stop);
    await waitFor(service, false, 30_000);
    downAt = performance.now();
    const observing = during({ downAt });
    await Promise.all([observing, sleep(downMs)]);
    const left = downMs - (performance.now() - downAt);
    if (left > 0) await sleep(left);
  } finally {
    restartAt = performance.now();
    try {
      if (!(await answers(service))) await shell(start);
      await waitFor(service, true, 60_000);
    } catch (err) {
      // biome-ignore lint/correctness/noUnsafeFinally: a service left down fails every later test; that error outranks the one in flight
      throw new Error(`${service} could not be started again (${(err as Error).message}): run \`${start}\` by hand`);
    }
  }
  return { downAt, restartAt };
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: a database of one's own

export interface TestDatabase {
  /** STORE_URL of the new, empty database. */
  url: string;
  name: string;
  /** A connection to it, for looking at tables. */
  admin: pg.Client;
  /** STORE_URL of a new, empty schema of the database (search_path), for many stores in one database. */
  freshSchemaUrl(): Promise<string>;
  drop(): Promise<void>;
}

async function connectPostgres(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
  } catch (err) {
    throw serviceDown('postgres', (err as Error).message);
  }
  // A connection dropped by the server (an outage test) must not crash the test process.
  client.on('error', () => {});
  return client;
}

/** A new database `gqe_test_<random>` on the server, dropped (WITH FORCE) by `drop()`. */
export async function freshPostgresDatabase(label = 'test'): Promise<TestDatabase> {
  const name = `gqe_${label}_${randomBytes(4).toString('hex')}`;
  const root = await connectPostgres(POSTGRES_URL);
  try {
    await root.query(`CREATE DATABASE ${name}`);
  } finally {
    await root.end();
  }
  const url = String(Object.assign(new URL(POSTGRES_URL), { pathname: `/${name}` }));
  const admin = await connectPostgres(url);
  let schemas = 0;
  return {
    url,
    name,
    admin,
    async freshSchemaUrl() {
      const schema = `s${++schemas}`;
      await admin.query(`CREATE SCHEMA ${schema}`);
      const u = new URL(url);
      u.searchParams.set('options', `-c search_path=${schema}`);
      return String(u);
    },
    async drop() {
      await admin.end().catch(() => {});
      const again = await connectPostgres(POSTGRES_URL);
      try {
        await again.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await again.end();
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Redis: a key prefix of one's own

export interface TestRedis {
  /** A connection that never retries, for looking at keys. */
  admin: Redis;
  /** A new key prefix under this run's root, e.g. `gqe-test:1a2b3c4d:3:`. */
  freshPrefix(): string;
  /** Deletes every key under the root and disconnects. */
  cleanUp(): Promise<void>;
}

export async function connectRedisForTests(): Promise<TestRedis> {
  const admin = new Redis(REDIS_URL, { lazyConnect: true, retryStrategy: () => null });
  let lastError: Error | undefined;
  admin.on('error', (err: Error) => {
    lastError = err;
  });
  try {
    await admin.connect();
    await admin.ping();
  } catch (err) {
    admin.disconnect();
    throw serviceDown('redis', (lastError ?? (err as Error)).message);
  }
  const root = `gqe-test:${randomBytes(4).toString('hex')}:`;
  let prefixes = 0;
  return {
    admin,
    freshPrefix: () => `${root}${++prefixes}:`,
    async cleanUp() {
      // After an outage test this connection is gone (and Redis lost its keys anyway): use a new one.
      const redis = admin.status === 'ready' ? admin : new Redis(REDIS_URL, { retryStrategy: () => null });
      redis.on('error', () => {});
      try {
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', `${root}*`, 'COUNT', 1000);
          if (keys.length > 0) await redis.del(...keys);
          cursor = next;
        } while (cursor !== '0');
      } finally {
        redis.disconnect();
        admin.disconnect();
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ: an exchange and a queue of one's own

export interface TestQueue {
  /** The consumer's settings for this queue: TRANSPORT_URL, QUEUE_NAME, NOTIFICATION_EXCHANGE, NOTIFICATION_TOPIC. */
  env: Record<string, string>;
  queue: string;
  connection: amqp.ChannelModel;
  /** Publishes raw bodies as Glance does (persistent, JSON), waiting for the broker's confirms. */
  publish(bodies: readonly string[], options?: { perSecond?: number; signal?: AbortSignal }): Promise<void>;
  /** Messages ready in the queue (not counting those delivered and not yet acknowledged). */
  ready(): Promise<number>;
  /** Messages in the dead-letter queue. */
  dead(): Promise<number>;
  /** Deletes the queues and the exchange, and closes the connection. */
  delete(): Promise<void>;
}

/**
 * A topic exchange standing for Glance's, and the enforcer's queue bound to it, declared with
 * `declareTopology` exactly as a consumer with `env` declares them (so there is no 406 when it
 * starts), so that bodies published before any consumer runs are kept.
 */
export async function freshQueue(label = 'test', bounds: { maxLength?: number; maxBytes?: number } = {}): Promise<TestQueue> {
  let connection: amqp.ChannelModel;
  try {
    connection = await amqp.connect(parseTransportUrl(TRANSPORT_URL)[0]!, { timeout: 10_000 });
  } catch (err) {
    throw serviceDown('rabbitmq', (err as Error).message);
  }
  connection.on('error', () => {});
  const name = `gqe-${label}-${randomBytes(4).toString('hex')}`;
  const defaults = loadConfig({}).amqp;
  const settings = {
    exchange: `${name}-x`,
    durableExchange: false,
    topic: name,
    queue: name,
    maxLength: bounds.maxLength ?? defaults.maxLength,
    maxBytes: bounds.maxBytes ?? defaults.maxBytes,
  };
  await declareTopology(connection, settings);
  const channel = await connection.createConfirmChannel();
  channel.on('error', () => {});
  const routingKey = `${settings.topic}.info`;
  return {
    env: {
      TRANSPORT_URL,
      QUEUE_NAME: settings.queue,
      NOTIFICATION_EXCHANGE: settings.exchange,
      NOTIFICATION_TOPIC: settings.topic,
      QUEUE_MAX_LENGTH: String(settings.maxLength),
      QUEUE_MAX_BYTES: String(settings.maxBytes),
    },
    queue: settings.queue,
    connection,
    async publish(bodies, options = {}) {
      const started = performance.now();
      for (let i = 0; i < bodies.length; i++) {
        if (options.signal?.aborted) break;
        if (options.perSecond) {
          const wait = started + (i / options.perSecond) * 1000 - performance.now();
          if (wait > 1) await sleep(wait);
        }
        channel.publish(settings.exchange, routingKey, Buffer.from(bodies[i]!), { contentType: 'application/json', deliveryMode: 2 });
        if (i % 2000 === 1999) await channel.waitForConfirms();
      }
      await channel.waitForConfirms();
    },
    async ready() {
      return (await channel.checkQueue(settings.queue)).messageCount;
    },
    async dead() {
      return (await channel.checkQueue(`${settings.queue}.dead`)).messageCount;
    },
    async delete() {
      await channel.deleteQueue(settings.queue).catch(() => {});
      await channel.deleteQueue(`${settings.queue}.dead`).catch(() => {});
      await channel.deleteExchange(settings.exchange).catch(() => {});
      await connection.close().catch(() => {});
    },
  };
}

// ---------------------------------------------------------------------------------------------
// A ledger of one's own, for consumer processes and for the test that reads it back

export type LedgerKind = 'postgres' | 'redis' | 'sqlite';

export interface TestLedger {
  kind: LedgerKind;
  /** STORE_URL (and REDIS_KEY_PREFIX) for the consumer processes. */
  env: Record<string, string>;
  /** The same ledger, opened in this process. */
  open(): Promise<LedgerStore>;
  /** Drops the database, deletes the keys or the file. */
  cleanUp(): Promise<void>;
}

/** A new, empty ledger: a database, a key prefix, or a SQLite file in a temporary directory. */
export async function freshLedger(kind: LedgerKind): Promise<TestLedger> {
  if (kind === 'postgres') {
    const db = await freshPostgresDatabase('ledger');
    return { kind, env: { STORE_URL: db.url }, open: () => openStore(db.url), cleanUp: () => db.drop() };
  }
  if (kind === 'redis') {
    const redis = await connectRedisForTests();
    const prefix = redis.freshPrefix();
    return {
      kind,
      env: { STORE_URL: REDIS_URL, REDIS_KEY_PREFIX: prefix },
      open: () => openStore(REDIS_URL, { redisKeyPrefix: prefix }),
      cleanUp: () => redis.cleanUp(),
    };
  }
  const dir = mkdtempSync(join(tmpdir(), 'gqe-ledger-'));
  const url = `sqlite://${join(dir, 'ledger.db')}`;
  return { kind, env: { STORE_URL: url }, open: () => openStore(url), cleanUp: async () => rmSync(dir, { recursive: true, force: true }) };
}
