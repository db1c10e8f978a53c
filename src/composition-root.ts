import { loadConfig, type Config } from './config.js';
import { Pipeline, type EnforcementMode, type ImageService, type PipelineOptions } from './pipeline/index.js';
import { ConfigError } from './errors.js';
import { createLogger, type Logger } from './log.js';
import { loadCredentials } from './openstack/credentials.js';
import { OpenStackConfigError, ScopeUnavailableError } from './openstack/errors.js';
import { GlanceClient } from './openstack/glance.js';
import { KeystoneClient } from './openstack/keystone.js';
import { keystoneLimitsReader } from './openstack/keystone-limits.js';
import { UnifiedLimits } from './openstack/limits.js';
import { keystoneProjectNames, type ProjectNames } from './openstack/projects.js';
import type { LimitSource } from './quota/limits.js';
import { StaticLimits } from './quota/static-limits.js';
import { openStore } from './store/index.js';
import { AdmissionGate, type AdmissionLedger, type AdmissionOptions } from './doors/admission.js';
import type { SubjectToken } from './openstack/keystone.js';
import { TokenProjects } from './openstack/token-projects.js';
import type { ActionRecord, LedgerStore } from './store/port.js';

/**
 * Everything a command needs, built from the environment in one place. The ledger is reached only
 * through the pipeline (its store is private); `close()` closes it.
 */
export interface Runtime {
  config: Config;
  log: Logger;
  limits: LimitSource;
  glance: ImageService | undefined;
  /** Keystone's project names, when an OpenStack identity is configured (status). */
  projectNames: ProjectNames | undefined;
  pipeline: Pipeline;
  /**
   * What the admission door reads besides the pipeline: the store's reservations and records (it
   * writes no ledger record), and Keystone's word on a client's token (undefined without OpenStack).
   */
  admission: { ledger: AdmissionLedger; validateToken: ((token: string) => Promise<SubjectToken | undefined>) | undefined };
  close(): Promise<void>;
}

/** OpenStack is configured the way the `openstack` CLI is: OS_CLOUD or OS_AUTH_URL. */
export function openstackConfigured(env: NodeJS.ProcessEnv): boolean {
  return Boolean(env.OS_CLOUD?.trim() || env.OS_AUTH_URL?.trim());
}

export interface RuntimeOptions {
  /** The command acts on Glance (reconcile, consume): OpenStack credentials are required. */
  needGlance?: boolean;
  /** Overrides STORE_URL (replay's --store). */
  storeUrl?: string;
  /** Checks the configuration before anything is opened (function mode requires a shared store). */
  check?: (config: Config) => void;
  onAction?: (action: ActionRecord) => void | Promise<void>;
  /** Glance's listing corrected the ledger (the metric gqe_ledger_corrections_total). */
  onCorrections?: PipelineOptions['onCorrections'];
  /** Every decision's usage and limits (the gauges gqe_project_usage and gqe_project_limit). */
  onDecision?: PipelineOptions['onDecision'];
  /**
   * Read-only commands (status) pass this: when the identity cannot read unified limits (no
   * OS_SYSTEM_SCOPE, an application credential, a broken clouds.yaml) they go on with the static
   * limits and report why here, instead of failing. Commands that act never pass it.
   */
  onLimitsUnavailable?: (reason: string) => void;
  /** Parts to use instead of those the environment names: tests, benches, replay. */
  overrides?: RuntimeOverrides;
}

/**
 * What a test, a bench or `replay` puts in place of what the environment names. Giving `limits` or
 * `glance` leaves OpenStack alone: the OS_* identity is not read.
 */
export interface RuntimeOverrides {
  /** Instead of opening STORE_URL; `close()` closes it all the same. */
  store?: LedgerStore;
  /** A source, or one built over the static QUOTA_LIMITS (replay's --limit). */
  limits?: LimitSource | ((configured: LimitSource) => LimitSource);
  /** Instead of the Glance the OS_* identity reaches; `null`: none, the pipeline decides but never acts. */
  glance?: ImageService | null;
  /** Instead of a logger at LOG_LEVEL; `null`: the pipeline logs nothing (replay reports in its output). */
  log?: Logger | null;
  clock?: () => number;
  mode?: EnforcementMode;
}

/** The parts a pipeline is built over; the settings come from the configuration. */
export type PipelineParts = Pick<PipelineOptions, 'store' | 'limits'> & Partial<PipelineOptions>;

/** The configuration of an empty environment: the defaults, for pipelines built without one. */
let defaults: Config | undefined;
function defaultConfig(): Config {
  defaults ??= loadConfig({});
  return defaults;
}

/**
 * The one place a `Pipeline` is built: the configuration's mode, exemptions, concurrency, door
 * limits and retention over the given parts (which win). Without a configuration, the defaults
 * of the configuration's schema (src/config.ts): tests and benches that need no environment.
 *
 * @example
 *   const pipeline = pipelineOf({ store: new MemoryStore(), limits: new StaticLimits({}) });
 */
export function pipelineOf(parts: PipelineParts, config: Config = defaultConfig()): Pipeline {
  return new Pipeline({
    mode: config.mode,
    protectedPolicy: config.protectedQueued,
    exemptProjects: config.exemptProjects,
    concurrency: config.enforceConcurrency,
    leaseMs: config.leaseMs,
    enforceIntervalMs: config.enforceIntervalMs,
    door: config.door,
    retention: { messagesMs: config.messageRetentionMs, actionsMs: config.auditRetentionMs, deadImagesMs: config.deletedImageRetentionMs },
    ...parts,
  });
}

/**
 * The configuration and the logger alone, for a command with no ledger (`bridge`): the same
 * loading and checks as `openRuntime`'s.
 */
export function openConfig(env: NodeJS.ProcessEnv = process.env): { config: Config; log: Logger } {
  const config = loadConfig(env);
  return { config, log: createLogger(config.logLevel) };
}

/**
 * Wires config -> store, limits (Keystone unified limits over the static ones, when OpenStack is
 * configured) and Glance -> the pipeline.
 */
export async function openRuntime(env: NodeJS.ProcessEnv = process.env, options: RuntimeOptions = {}): Promise<Runtime> {
  const config = loadConfig(env);
  options.check?.(config);
  const overrides = options.overrides ?? {};
  const log = overrides.log ?? createLogger(config.logLevel);
  const staticLimits = new StaticLimits(config.limits.defaults, config.limits.perProject);
  let limits: LimitSource = staticLimits;
  let glance: ImageService | undefined;
  let keystone: KeystoneClient | undefined;
  let projectNames: ProjectNames | undefined;
  if (overrides.limits !== undefined || overrides.glance !== undefined) {
    const given = overrides.limits;
    limits = typeof given === 'function' ? given(staticLimits) : (given ?? staticLimits);
    glance = overrides.glance ?? undefined;
  } else if (openstackConfigured(env)) {
    try {
      keystone = new KeystoneClient(loadCredentials(env, { onWarning: (message) => log.warn(message) }), { log });
      glance = new GlanceClient(keystone, { log, responseMaxBytes: config.glanceResponseMaxBytes });
      projectNames = keystoneProjectNames(keystone);
      limits = new UnifiedLimits(keystoneLimitsReader(keystone, { log }), {
        fallback: staticLimits,
        createRateWindowSeconds: config.createRateWindowSeconds,
        cacheSeconds: config.limitsCacheSeconds,
        log,
      });
    } catch (err) {
      const recoverable = err instanceof ScopeUnavailableError || err instanceof OpenStackConfigError;
      if (!options.onLimitsUnavailable || !recoverable) throw err;
      options.onLimitsUnavailable((err as Error).message);
    }
  } else if (options.needGlance) {
    throw new ConfigError(
      'OS_AUTH_URL: this command talks to Glance and Keystone, but no OpenStack identity is configured; set OS_CLOUD (with clouds.yaml) or OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME and OS_SYSTEM_SCOPE=all',
    );
  }
  const store = overrides.store ?? (await openStore(options.storeUrl ?? config.storeUrl, { redisKeyPrefix: config.redisKeyPrefix }));
  const pipeline = pipelineOf(
    {
      store,
      limits,
      images: glance,
      ...(overrides.log === null ? {} : { log }),
      ...(overrides.clock ? { clock: overrides.clock } : {}),
      ...(overrides.mode ? { mode: overrides.mode } : {}),
      ...(options.onAction ? { onAction: options.onAction } : {}),
      ...(options.onCorrections ? { onCorrections: options.onCorrections } : {}),
      ...(options.onDecision ? { onDecision: options.onDecision } : {}),
    },
    config,
  );
  const validateToken = keystone ? (token: string) => keystone.validateToken(token) : undefined;
  return { config, log, limits, glance, projectNames, pipeline, admission: { ledger: store, validateToken }, close: () => store.close() };
}

/**
 * The admission door over a runtime (`consume` with ADMISSION_PORT, `gate`): the same limits and
 * ledger as the pipeline, Keystone for tokens (cached by TokenProjects), and Glance's listing
 * through the pipeline when the ledger alone says a project is full.
 */
export function admissionGateOf(runtime: Runtime, onAnswer?: AdmissionOptions['onAnswer']): AdmissionGate {
  const { config, log, pipeline, limits } = runtime;
  const validate = runtime.admission.validateToken;
  if (!validate) {
    throw new ConfigError(
      'ADMISSION_PORT: the admission endpoint validates client tokens with Keystone, but no OpenStack identity is configured; set OS_CLOUD or OS_AUTH_URL (with OS_SYSTEM_SCOPE=all)',
    );
  }
  const tokens = new TokenProjects(validate, { maxEntries: config.admission.tokenCacheSize });
  return new AdmissionGate({
    ledger: runtime.admission.ledger,
    limits,
    tokenOwner: (token) => tokens.lookup(token),
    ...(runtime.glance ? { confirmOnGlance: async (projectId: string) => (await pipeline.enforceOnGlance(projectId)).usage.image_count_total } : {}),
    exemptProjects: config.exemptProjects,
    mode: config.mode,
    failClosed: config.admission.failClosed,
    timeoutMs: config.admission.timeoutMs,
    reservationMs: config.admission.reservationMs,
    confirmMs: config.admission.confirmMs,
    log,
    ...(onAnswer ? { onAnswer } : {}),
  });
}
