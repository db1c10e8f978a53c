/**
 * Synthetic Glance notification streams, byte-for-byte in the wire format of the Glance 25.1
 * captures in test/fixtures/glance-25.1: the messagingv2 envelope whose `oslo.message` is a JSON
 * string written by Python's json.dumps (", " and ": " separators, ASCII only), inner keys and
 * payload keys in Glance's order.
 *
 * Images follow the lifecycles the API produces (lab NOTES, "Which API call emits what"): create,
 * optional PATCHes, then a plain upload, a glance-direct import, a truncated upload or nothing,
 * then downloads / member changes / deactivation, then maybe a delete. Many images are in flight
 * at once, so their events interleave on the wire the way concurrent API calls do.
 *
 * Everything comes from one seeded PRNG: the same options give the same bodies.
 *
 * @example
 *   const { bodies, live } = generateHistory({ seed: 1, projects: 10, messages: 5_000 });
 *   const stream = withDuplicates(bodies, 0.01, 2);   // ~1% redelivered later in the stream
 */

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

/** sfc32, seeded through splitmix32: fast, 128 bits of state, identical on every platform. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    let s = seed >>> 0;
    const split = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = split();
    this.b = split();
    this.c = split();
    this.d = split();
    for (let i = 0; i < 12; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** [0, 1) */
  next(): number {
    return this.u32() / 4294967296;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Integer in [lo, hi]. */
  between(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** Exponential with the given mean, at least 1. */
  exp(mean: number): number {
    return Math.max(1, Math.round(-Math.log(1 - this.next()) * mean));
  }

  hex32(): string {
    return hex8(this.u32()) + hex8(this.u32()) + hex8(this.u32()) + hex8(this.u32());
  }

  /** Python's uuid.uuid4().hex: Keystone project/user ids, oslo's `_unique_id`. */
  uuid4Hex(): string {
    const b = (this.u32() & 0xffff0fff) | 0x00004000;
    const c = ((this.u32() & 0x3fffffff) | 0x80000000) >>> 0;
    return hex8(this.u32()) + hex8(b >>> 0) + hex8(c) + hex8(this.u32());
  }

  /** str(uuid.uuid4()): image, task and message ids. */
  uuid4(): string {
    const h = this.uuid4Hex();
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
}

const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

function hex8(n: number): string {
  return HEX_BYTE[n >>> 24]! + HEX_BYTE[(n >>> 16) & 255]! + HEX_BYTE[(n >>> 8) & 255]! + HEX_BYTE[n & 255]!;
}

// ---------------------------------------------------------------------------------------------
// Wire format

const NEEDS_ESCAPE = /["\\]|[^\x20-\x7e]/;
const NEEDS_ASCII_ESCAPE = /[^\x20-\x7e]/;

/** json.dumps(s) with ensure_ascii: JSON.stringify plus \uXXXX for anything outside ASCII. */
function pythonString(s: string): string {
  const json = JSON.stringify(s);
  return NEEDS_ASCII_ESCAPE.test(json) ? json.replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) : json;
}

/**
 * Python's `json.dumps(value)` with default arguments, which is what oslo.messaging writes:
 * `{"a": 1, "b": [1, 2]}`. Integers only (Glance's payloads have no floats). With `nested`, the
 * text comes out already escaped as the inside of a JSON string literal (every `"` as `\"`), so
 * the envelope needs no second encoding pass: this is most of what makes the generator fast.
 */
function dumps(value: unknown, nested: boolean): string {
  if (value === null || value === undefined) return 'null';
  switch (typeof value) {
    case 'string':
      // Nearly every string here is plain ASCII: quote it directly.
      if (!NEEDS_ESCAPE.test(value)) return nested ? '\\"' + value + '\\"' : '"' + value + '"';
      return nested ? JSON.stringify(pythonString(value)).slice(1, -1) : pythonString(value);
    case 'number':
      if (!Number.isSafeInteger(value)) throw new Error(`pythonJson: only safe integers are supported, got ${value}`);
      return String(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object': {
      if (Array.isArray(value)) {
        if (value.length === 0) return '[]';
        let out = '[' + dumps(value[0], nested);
        for (let i = 1; i < value.length; i++) out += ', ' + dumps(value[i], nested);
        return out + ']';
      }
      let out = '';
      for (const key in value as Record<string, unknown>) {
        out += (out === '' ? '{' : ', ') + dumps(key, nested) + ': ' + dumps((value as Record<string, unknown>)[key], nested);
      }
      return out === '' ? '{}' : out + '}';
    }
    default:
      throw new Error(`pythonJson: cannot encode a ${typeof value}`);
  }
}

/** Python's `json.dumps(value)`: `{"a": 1, "b": [1, 2]}`, ASCII only. */
export function pythonJson(value: unknown): string {
  return dumps(value, false);
}

/**
 * A string built by concatenation is a tree of pieces in V8 until something reads it whole;
 * 200k such trees make every GC crawl (and would bill the first JSON.parse for the flattening).
 * Number() reads the whole string, which flattens it in place.
 */
function flatten(s: string): string {
  flatSink ^= Number(s) | 0;
  return s;
}
// Only written: a use the engine cannot prove away, so that flatten() keeps its Number().
// biome-ignore lint/correctness/noUnusedVariables: written on purpose, never read
let flatSink = 0;

/**
 * The messagingv2 body around an inner oslo message, exactly as the driver publishes it:
 * json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).
 */
export function encodeBody(message: object): string {
  return '{"oslo.version": "2.0", "oslo.message": "' + dumps(message, true) + '"}';
}

const TWO_DIGITS = Array.from({ length: 60 }, (_, i) => String(i).padStart(2, '0'));
let cachedDay = NaN;
let cachedDayIso = '';
let cachedDayOslo = '';

/** "HH:MM:SS" of a second, after the date part ("YYYY-MM-DDT" / "YYYY-MM-DD ") is cached. */
function timeOfDay(epochSeconds: number): string {
  const day = Math.floor(epochSeconds / 86400);
  if (day !== cachedDay) {
    cachedDay = day;
    const date = new Date(day * 86_400_000).toISOString().slice(0, 10);
    cachedDayIso = date + 'T';
    cachedDayOslo = date + ' ';
  }
  const s = epochSeconds - day * 86400;
  return TWO_DIGITS[Math.floor(s / 3600)]! + ':' + TWO_DIGITS[Math.floor(s / 60) % 60]! + ':' + TWO_DIGITS[s % 60]!;
}

/** Payload times: Glance's isotime, whole seconds with Z ("2026-11-26T20:27:41Z"). */
export function isoTime(epochSeconds: number): string {
  const time = timeOfDay(epochSeconds);
  return cachedDayIso + time + 'Z';
}

/**
 * oslo's `timestamp`: str(datetime.utcnow()), so "2026-11-26 20:27:41.984542", and no fraction at
 * all when the microseconds are zero.
 */
export function osloTimestamp(epochMicros: number): string {
  const seconds = Math.floor(epochMicros / 1_000_000);
  const time = timeOfDay(seconds);
  const micros = epochMicros - seconds * 1_000_000;
  return cachedDayOslo + time + (micros === 0 ? '' : '.' + String(micros).padStart(6, '0'));
}

// ---------------------------------------------------------------------------------------------
// Projects

const projectIds: string[] = [];

/** The i-th project's Keystone id (32 hex, uuid4-shaped): the same for every seed. */
export function projectId(i: number): string {
  let id = projectIds[i];
  if (id === undefined) {
    id = new Rng(0x5eed0000 + i).uuid4Hex();
    projectIds[i] = id;
  }
  return id;
}

// ---------------------------------------------------------------------------------------------
// The model

export interface HistoryOptions {
  seed: number;
  /** Number of projects; their ids are projectId(0..projects-1). */
  projects: number;
  /** Exactly this many bodies are produced; images still in flight at the end stay unfinished. */
  messages: number;
  /** Wall time of the first message (epoch ms). Default 2026-11-26T20:27:41Z, as in the lab. */
  startMs?: number;
  /** Share of images that get an image.delete some minutes to hours after their last other
   *  call (default 0.5); deletes due after the last message never happen. */
  deleteRatio?: number;
  /** How an image gets data. Weights, normalised: plain upload (0.6), glance-direct import
   *  (0.12), truncated upload that fails (0.05), never any data (0.23). */
  uploadRatio?: number;
  importRatio?: number;
  failRatio?: number;
  queuedOnlyRatio?: number;
  /** Mean time between two messages on the wire (default 50 ms, i.e. about 20 msg/s). */
  meanGapMs?: number;
  /** Zipf exponent of project activity: 0 spreads images evenly, 1 (default) gives a few busy
   *  projects (CI, autoscalers) and a long tail of quiet ones. */
  projectSkew?: number;
}

export interface LiveTotals {
  /** Images not deleted: what Glance's image_count_total counts. */
  count: number;
  /** Sum of the sizes the last notification of each live image carried (bytes). */
  sizeBytes: number;
}

export interface History {
  /** Raw AMQP bodies, in wire order. */
  bodies: string[];
  /** Per project, from the generator's own state after the last body: an oracle for the ledger. */
  live: Map<string, LiveTotals>;
  /** Bodies per event type (ERROR ones as `image.upload.error`). */
  eventCounts: Record<string, number>;
}

interface Image {
  id: string;
  name: string;
  status: string;
  createdAt: number;
  updatedAt: number;
  minDisk: number;
  minRam: number;
  protected: boolean;
  checksum: string | null;
  owner: string;
  diskFormat: string;
  containerFormat: string;
  size: number | null;
  virtualSize: number | null;
  visibility: string;
  properties: Record<string, string>;
  tags: string[];
  deleted: boolean;
  deletedAt: number | null;
  /** What the data calls will end up with. */
  finalSize: number;
  /** Its image.create is on the wire: only then does the oracle count it. */
  announced: boolean;
  ownerIndex: number;
  taskId: string | null;
  member: string | null;
  memberSince: number;
  memberUpdated: number;
}

/** One notification an image's script will emit, `delay` µs after the previous one. */
type StepKind =
  | 'create'
  | 'patch'
  | 'patch.tag'
  | 'upload.saving'
  | 'upload.prepare'
  | 'upload.upload'
  | 'upload.activate'
  | 'upload.active'
  | 'stage.first'
  | 'stage.second'
  | 'task.create'
  | 'task.processing'
  | 'import.importing'
  | 'import.prepare'
  | 'import.upload'
  | 'import.activate'
  | 'import.done'
  | 'task.success'
  | 'task.run'
  | 'fail.error'
  | 'fail.queued'
  | 'deactivate'
  | 'reactivate'
  | 'send'
  | 'member.create'
  | 'member.update'
  | 'member.delete'
  | 'delete';

interface Step {
  kind: StepKind;
  delay: number;
}

interface Script {
  image: Image;
  steps: Step[];
  next: number;
}

const MS = 1000;
const SECOND = 1_000_000;
const MiB = 1024 * 1024;

const NAMES = [
  'ubuntu-22.04-server-cloudimg-amd64',
  'ubuntu-24.04-server-cloudimg-amd64',
  'debian-12-genericcloud-amd64',
  'cirros-0.6.2-x86_64-disk',
  'centos-stream-9',
  'rocky-9.4-x86_64',
  'fedora-coreos-40',
  'windows-server-2022',
  'k8s-node',
  'gitlab-runner',
  'ci-build',
  'snapshot',
  'backup',
  'app-golden',
] as const;
const DISK_FORMATS = ['qcow2', 'qcow2', 'qcow2', 'qcow2', 'raw', 'raw', 'vmdk', 'iso'] as const;
const DISTROS = ['ubuntu', 'debian', 'centos', 'rocky', 'fedora', 'windows', 'cirros'] as const;
const TAGS = ['ci', 'golden', 'nightly', 'prod', 'test', 'k8s', 'lab-tag'] as const;

/** Image sizes: tiny test images (cirros), mostly 0.2-1 GiB cloud qcow2s, a tail of 1-8 GiB
 *  (Windows, instance snapshots). */
function imageSize(rng: Rng): number {
  const r = rng.next();
  const mib = r < 0.25 ? rng.between(1, 64) : r < 0.9 ? rng.between(200, 1024) : rng.between(1024, 8192);
  return mib * MiB - rng.int(MiB);
}

/** A plain ASCII string as it appears inside the envelope's string literal. */
function str(value: string): string {
  return dumps(value, true);
}

/**
 * The image payload (glance/notifier.py format_image_notification, keys in its order), written
 * straight into the envelope's escaped form: by far the most frequent payload, so it skips the
 * generic encoder. The unit test re-encodes generated bodies generically to keep both in step.
 */
function imagePayload(im: Image, extras: string): string {
  return (
    `{\\"id\\": \\"${im.id}\\", \\"name\\": ${str(im.name)}, \\"status\\": \\"${im.status}\\", ` +
    `\\"created_at\\": \\"${isoTime(im.createdAt)}\\", \\"updated_at\\": \\"${isoTime(im.updatedAt)}\\", ` +
    `\\"min_disk\\": ${im.minDisk}, \\"min_ram\\": ${im.minRam}, \\"protected\\": ${im.protected}, ` +
    `\\"checksum\\": ${im.checksum === null ? 'null' : `\\"${im.checksum}\\"`}, \\"owner\\": \\"${im.owner}\\", ` +
    `\\"disk_format\\": \\"${im.diskFormat}\\", \\"container_format\\": \\"${im.containerFormat}\\", ` +
    `\\"size\\": ${im.size ?? 'null'}, \\"virtual_size\\": ${im.virtualSize ?? 'null'}, ` +
    `\\"is_public\\": ${im.visibility === 'public'}, \\"visibility\\": \\"${im.visibility}\\", ` +
    `\\"properties\\": ${dumps(im.properties, true)}, \\"tags\\": ${dumps(im.tags, true)}, ` +
    `\\"deleted\\": ${im.deleted}, \\"deleted_at\\": ${im.deletedAt === null ? 'null' : `\\"${isoTime(im.deletedAt)}\\"`}` +
    `${extras}}`
  );
}

// What image.prepare and image.upload add: the stores as the import flow sees them (a list,
// beside the comma-separated property), and for prepare the target backend.
const PREPARE_UPLOAD = ', \\"os_glance_importing_to_stores\\": [], \\"os_glance_failed_import\\": [], \\"backend\\": \\"file\\"';
const UPLOAD_UPLOAD = ', \\"os_glance_importing_to_stores\\": [], \\"os_glance_failed_import\\": []';
const PREPARE_IMPORT = ', \\"os_glance_importing_to_stores\\": [\\"file\\"], \\"os_glance_failed_import\\": [], \\"backend\\": \\"file\\"';
const UPLOAD_IMPORT = ', \\"os_glance_importing_to_stores\\": [\\"file\\"], \\"os_glance_failed_import\\": []';

function taskPayload(im: Image, status: string, createdAt: number, updatedAt: number, expiresAt: number): Record<string, unknown> {
  return {
    id: im.taskId,
    type: 'api_image_import',
    status,
    result: null,
    owner: im.owner,
    message: null,
    expires_at: isoTime(expiresAt),
    created_at: isoTime(createdAt),
    updated_at: isoTime(updatedAt),
    deleted: false,
    deleted_at: null,
  };
}

class MinHeap {
  private readonly items: { at: number; seq: number; script: Script }[] = [];

  peek(): { at: number; seq: number; script: Script } | undefined {
    return this.items[0];
  }

  push(at: number, seq: number, script: Script): void {
    const a = this.items;
    a.push({ at, seq, script });
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }

  pop(): { at: number; seq: number; script: Script } | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.less(a[l]!, a[m]!)) m = l;
        if (r < a.length && this.less(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }

  private less(x: { at: number; seq: number }, y: { at: number; seq: number }): boolean {
    return x.at < y.at || (x.at === y.at && x.seq < y.seq);
  }
}

/**
 * A deterministic stream of `messages` bodies from `projects` projects' image lifecycles.
 *
 * @example
 *   const { bodies } = generateHistory({ seed: 42, projects: 1000, messages: 200_000 });
 */
export function generateHistory(options: HistoryOptions): History {
  const rng = new Rng(options.seed);
  const startUs = (options.startMs ?? Date.UTC(2026, 10, 26, 20, 27, 41)) * MS;
  const deleteRatio = options.deleteRatio ?? 0.5;
  const weights = [options.uploadRatio ?? 0.6, options.importRatio ?? 0.12, options.failRatio ?? 0.05, options.queuedOnlyRatio ?? 0.23];
  const weightSum = weights.reduce((a, b) => a + b, 0);
  if (!(weightSum > 0) || weights.some((w) => w < 0)) {
    throw new Error('generateHistory: uploadRatio, importRatio, failRatio and queuedOnlyRatio must be >= 0 and not all 0');
  }
  if (options.projects < 1) throw new Error('generateHistory: projects must be at least 1');
  const meanGapUs = (options.meanGapMs ?? 50) * MS;

  // Zipf-like project activity: cumulative weights, sampled by binary search.
  const skew = options.projectSkew ?? 1;
  const cumulative: number[] = [];
  let total = 0;
  for (let i = 0; i < options.projects; i++) {
    total += 1 / (i + 1) ** skew;
    cumulative.push(total);
  }
  // Which project is busiest should not always be project 0: shuffle ranks with the seed.
  const rankToProject = Array.from({ length: options.projects }, (_, i) => i);
  for (let i = rankToProject.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [rankToProject[i], rankToProject[j]] = [rankToProject[j]!, rankToProject[i]!];
  }
  const pickProject = (): number => {
    const x = rng.next() * total;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid]! < x) lo = mid + 1;
      else hi = mid;
    }
    return rankToProject[lo]!;
  };
  const userOf = new Map<string, string>();
  const userIn = (project: string): string => {
    let u = userOf.get(project);
    if (!u) {
      u = rng.uuid4Hex();
      userOf.set(project, u);
    }
    return u;
  };

  const bodies: string[] = [];
  const eventCounts: Record<string, number> = {};
  const images: Image[] = [];

  /** `payload` is already in the envelope's escaped form (imagePayload, or dumps(_, true)). */
  const emit = (eventType: string, priority: string, payload: string, nowUs: number): void => {
    const body =
      `{"oslo.version": "2.0", "oslo.message": "{\\"message_id\\": \\"${rng.uuid4()}\\", ` +
      `\\"publisher_id\\": \\"image.localhost\\", \\"event_type\\": \\"${eventType}\\", ` +
      `\\"priority\\": \\"${priority}\\", \\"payload\\": ${payload}, ` +
      `\\"timestamp\\": \\"${osloTimestamp(nowUs)}\\", \\"_unique_id\\": \\"${rng.uuid4Hex()}\\"}"}`;
    bodies.push(flatten(body));
    const key = priority === 'ERROR' ? `${eventType}.error` : eventType;
    eventCounts[key] = (eventCounts[key] ?? 0) + 1;
  };

  // Delays (µs). A call's notifications come milliseconds apart; calls of one client are
  // hundreds of ms to minutes apart; an image lives minutes to hours before its delete.
  const inCall = (loMs: number, hiMs: number): number => rng.between(loMs * MS, hiMs * MS);
  const betweenCalls = (): number => rng.between(300 * MS, 2 * SECOND) + (rng.chance(0.3) ? rng.exp(60 * SECOND) : 0);
  const lifetime = (): number => (rng.chance(0.5) ? rng.exp(120 * SECOND) : rng.exp(2 * 3600 * SECOND));

  const newScript = (nowUs: number): Script => {
    const ownerIndex = pickProject();
    const owner = projectId(ownerIndex);
    const nowS = Math.floor(nowUs / SECOND);
    const name = rng.pick(NAMES);
    const snapshot = name === 'snapshot' || name === 'backup';
    const properties: Record<string, string> = {};
    if (snapshot) {
      properties.image_type = name;
      properties.instance_uuid = rng.uuid4();
    } else if (rng.chance(0.5)) {
      properties.os_distro = rng.pick(DISTROS);
      if (rng.chance(0.5)) properties.hw_disk_bus = 'virtio';
    }
    const image: Image = {
      id: rng.uuid4(),
      name: name === 'ci-build' || snapshot ? `${name}-${rng.int(100000)}` : name,
      status: 'queued',
      createdAt: nowS,
      updatedAt: nowS,
      minDisk: rng.chance(0.7) ? 0 : rng.pick([1, 10, 20, 40]),
      minRam: rng.chance(0.8) ? 0 : rng.pick([512, 1024, 2048]),
      protected: rng.chance(0.02),
      checksum: null,
      owner,
      diskFormat: rng.pick(DISK_FORMATS),
      containerFormat: rng.chance(0.97) ? 'bare' : 'ova',
      size: null,
      virtualSize: null,
      visibility: rng.chance(0.75) ? 'shared' : rng.chance(0.8) ? 'private' : rng.chance(0.5) ? 'public' : 'community',
      properties,
      tags: rng.chance(0.3) ? [rng.pick(TAGS)] : [],
      deleted: false,
      deletedAt: null,
      finalSize: imageSize(rng),
      announced: false,
      ownerIndex,
      taskId: null,
      member: null,
      memberSince: 0,
      memberUpdated: 0,
    };
    images.push(image);

    const steps: Step[] = [{ kind: 'create', delay: 0 }];
    const call = (kind: StepKind): number => steps.push({ kind, delay: betweenCalls() });
    const then = (kind: StepKind, loMs: number, hiMs: number): number => steps.push({ kind, delay: inCall(loMs, hiMs) });

    const patches = rng.chance(0.4) ? rng.between(1, 3) : 0;
    for (let i = 0; i < patches; i++) call(rng.chance(0.3) ? 'patch.tag' : 'patch');

    const r = rng.next() * weightSum;
    let active = false;
    if (r < weights[0]!) {
      call('upload.saving');
      then('upload.prepare', 1, 20);
      // Data transfer: ~100 MB/s, capped so the stream keeps moving.
      then('upload.upload', 2, Math.min(30_000, 3 + Math.floor(image.finalSize / (100 * MiB)) * 1000));
      then('upload.activate', 1, 5);
      then('upload.active', 10, 50);
      active = true;
    } else if (r < weights[0]! + weights[1]!) {
      call('stage.first');
      then('stage.second', 5, Math.min(30_000, 25 + Math.floor(image.finalSize / (100 * MiB)) * 1000));
      call('task.create');
      then('task.processing', 50, 400);
      then('import.importing', 10, 60);
      then('import.prepare', 10, 60);
      then('import.upload', 2, 30);
      then('import.activate', 1, 5);
      then('import.done', 10, 50);
      then('import.done', 10, 50);
      then('task.success', 5, 20);
      then('task.run', 10, 40);
      active = true;
    } else if (r < weights[0]! + weights[1]! + weights[2]!) {
      call('upload.saving');
      then('upload.prepare', 1, 20);
      then('fail.error', 50, 2000);
      then('fail.queued', 10, 50);
    }

    if (active) {
      // Reads and sharing on live images: non-ledger traffic at a low rate.
      if (rng.chance(0.15)) for (let i = rng.between(1, 3); i > 0; i--) call('send');
      if (image.visibility === 'shared' && rng.chance(0.08)) {
        call('member.create');
        call('member.update');
        if (rng.chance(0.5)) call('send');
        if (rng.chance(0.3)) call('member.delete');
      }
      if (rng.chance(0.03)) {
        call('deactivate');
        call('reactivate');
      }
    }
    if (!image.protected && rng.chance(deleteRatio)) steps.push({ kind: 'delete', delay: lifetime() });
    return { image, steps, next: 0 };
  };

  const play = (script: Script, kind: StepKind, nowUs: number): void => {
    const im = script.image;
    const nowS = Math.floor(nowUs / SECOND);
    switch (kind) {
      case 'create':
        im.announced = true;
        emit('image.create', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'patch':
        im.updatedAt = nowS;
        if (rng.chance(0.5)) im.name = `${im.name.replace(/-renamed$/, '')}-renamed`;
        else im.properties[`custom_${rng.int(10)}`] = `v${rng.int(100)}`;
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'patch.tag': {
        im.updatedAt = nowS;
        const tag = rng.pick(TAGS);
        const at = im.tags.indexOf(tag);
        if (at >= 0) im.tags.splice(at, 1);
        else im.tags.push(tag);
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      }
      case 'upload.saving':
        im.updatedAt = nowS;
        im.status = 'saving';
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'upload.prepare':
        emit('image.prepare', 'INFO', imagePayload(im, PREPARE_UPLOAD), nowUs);
        break;
      case 'upload.upload':
        im.status = 'active';
        im.checksum = rng.hex32();
        im.size = im.finalSize;
        im.virtualSize = im.diskFormat === 'raw' ? im.finalSize : rng.chance(0.5) ? null : im.finalSize * 2;
        emit('image.upload', 'INFO', imagePayload(im, UPLOAD_UPLOAD), nowUs);
        break;
      case 'upload.activate':
      case 'import.activate':
        emit('image.activate', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'upload.active':
        im.updatedAt = nowS;
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'stage.first':
        // Glance notifies before it saves the new status, so updated_at is still the old one.
        im.status = 'uploading';
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'stage.second':
        im.updatedAt = nowS;
        im.size = im.finalSize;
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'task.create':
        im.taskId = rng.uuid4();
        emit('task.create', 'INFO', dumps(taskPayload(im, 'pending', nowS, nowS, nowS), true), nowUs);
        break;
      case 'task.processing':
        emit('task.processing', 'INFO', dumps(taskPayload(im, 'processing', nowS, nowS, nowS), true), nowUs);
        break;
      case 'import.importing':
        im.updatedAt = nowS;
        im.status = 'importing';
        im.properties.os_glance_import_task = im.taskId!;
        im.properties.os_glance_importing_to_stores = 'file';
        im.properties.os_glance_failed_import = '';
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'import.prepare':
        emit('image.prepare', 'INFO', imagePayload(im, PREPARE_IMPORT), nowUs);
        break;
      case 'import.upload':
        im.status = 'active';
        im.checksum = rng.hex32();
        im.virtualSize = im.diskFormat === 'raw' ? im.finalSize : im.finalSize * 2;
        emit('image.upload', 'INFO', imagePayload(im, UPLOAD_IMPORT), nowUs);
        break;
      case 'import.done':
        im.updatedAt = nowS;
        im.properties.os_glance_importing_to_stores = '';
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'task.success':
        emit('task.success', 'INFO', dumps(taskPayload(im, 'success', nowS, nowS, nowS + 2 * 86400), true), nowUs);
        break;
      case 'task.run':
        emit('task.run', 'INFO', dumps(taskPayload(im, 'pending', nowS, nowS, nowS), true), nowUs);
        break;
      case 'fail.error': {
        const missing = im.finalSize - rng.int(Math.min(im.finalSize, 64 * MiB));
        emit(
          'image.upload',
          'ERROR',
          str(
            `Failed to upload image data for image ${im.id} due to internal error: ` +
              `The client disconnected while sending the body (${missing} more bytes were expected)`,
          ),
          nowUs,
        );
        break;
      }
      case 'fail.queued':
        im.updatedAt = nowS;
        im.status = 'queued';
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'deactivate':
      case 'reactivate':
        im.updatedAt = nowS;
        im.status = kind === 'deactivate' ? 'deactivated' : 'active';
        emit('image.update', 'INFO', imagePayload(im, ''), nowUs);
        break;
      case 'send': {
        const receiver = im.member !== null && rng.chance(0.5) ? im.member : im.owner;
        emit(
          'image.send',
          'INFO',
          dumps({ bytes_sent: im.size ?? 0, image_id: im.id, owner_id: im.owner, receiver_tenant_id: receiver, receiver_user_id: userIn(receiver) }, true),
          nowUs,
        );
        break;
      }
      case 'member.create':
      case 'member.update':
      case 'member.delete': {
        if (kind === 'member.create') {
          const other = pickProject();
          im.member = other !== im.ownerIndex ? projectId(other) : options.projects > 1 ? projectId((other + 1) % options.projects) : rng.uuid4Hex();
          im.memberSince = nowS;
        }
        const deleted = kind === 'member.delete';
        if (!deleted) im.memberUpdated = nowS;
        emit(
          `image.${kind}`,
          'INFO',
          dumps(
            {
              image_id: im.id,
              member_id: im.member,
              status: kind === 'member.create' ? 'pending' : 'accepted',
              created_at: isoTime(im.memberSince),
              updated_at: isoTime(im.memberUpdated),
              deleted,
              deleted_at: deleted ? isoTime(nowS) : null,
            },
            true,
          ),
          nowUs,
        );
        if (kind === 'member.delete') im.member = null;
        break;
      }
      case 'delete':
        im.updatedAt = nowS;
        im.status = 'deleted';
        im.deleted = true;
        im.deletedAt = nowS;
        emit('image.delete', 'INFO', imagePayload(im, ''), nowUs);
        break;
    }
  };

  // Discrete-event simulation: new images arrive as a Poisson process; each image's script
  // schedules its next notification; the heap yields them in time order, which is wire order.
  const heap = new MinHeap();
  let seq = 0;
  const eventsPerImage = 1 + 0.8 + (weights[0]! * 5 + weights[1]! * 12 + weights[2]! * 4) / weightSum + deleteRatio + 0.3;
  const arrivalMeanUs = meanGapUs * eventsPerImage;
  let nextArrival = startUs;
  let lastUs = startUs;
  while (bodies.length < options.messages) {
    const first = heap.peek();
    if (!first || nextArrival <= first.at) {
      const script = newScript(nextArrival);
      heap.push(nextArrival, seq++, script);
      nextArrival += rng.exp(arrivalMeanUs);
      continue;
    }
    const head = heap.pop()!;
    // Distinct images can land on the same microsecond; the wire still has one order.
    const nowUs = Math.max(head.at, lastUs);
    lastUs = nowUs;
    const { script } = head;
    const step = script.steps[script.next++]!;
    play(script, step.kind, nowUs);
    const following = script.steps[script.next];
    if (following) heap.push(nowUs + following.delay, seq++, script);
  }

  const live = new Map<string, LiveTotals>();
  for (const im of images) {
    if (im.deleted || !im.announced) continue;
    const t = live.get(im.owner) ?? { count: 0, sizeBytes: 0 };
    t.count++;
    t.sizeBytes += im.size ?? 0;
    live.set(im.owner, t);
  }
  return { bodies, live, eventCounts };
}

/**
 * Broker redeliveries: about `ratio` of the bodies appear a second time, byte-identical, between
 * 1 and `maxDistance` positions after the original (an unacked batch redelivered after a consumer
 * restart, or a publisher retry). The originals keep their order.
 */
export function withDuplicates(bodies: readonly string[], ratio: number, seed: number, maxDistance = 2000): string[] {
  const rng = new Rng(seed ^ 0xd0b1e5);
  const later: (string[] | undefined)[] = new Array(bodies.length + 1);
  for (let i = 0; i < bodies.length; i++) {
    if (!rng.chance(ratio)) continue;
    const at = Math.min(bodies.length, i + 1 + rng.int(maxDistance));
    later[at] ??= [];
    later[at].push(bodies[i]!);
  }
  const out: string[] = [];
  for (let i = 0; i <= bodies.length; i++) {
    const copies = later[i];
    if (copies) for (const c of copies) out.push(c);
    if (i < bodies.length) out.push(bodies[i]!);
  }
  return out;
}
