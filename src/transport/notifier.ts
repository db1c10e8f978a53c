import { randomUUID } from 'node:crypto';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { LRUCache } from 'lru-cache';
import type { Logger } from '../log.js';
import type { ProjectReport } from '../pipeline/ports.js';
import type { ActionRecord } from '../store/port.js';
import { scrubFields } from '../redact.js';
import { BROKER_TIMEOUT_MS, withTimeout } from './amqp.js';

/** oslo's timestamp format: UTC, space separator, microseconds only when non-zero. */
export function osloTimestamp(ms: number): string {
  const iso = new Date(ms).toISOString(); // 2026-11-26T20:27:41.984Z
  const [date, time] = iso.slice(0, -1).split('T') as [string, string];
  const [hms, frac = '000'] = time.split('.');
  return frac === '000' ? `${date} ${hms}` : `${date} ${hms}.${frac.padEnd(6, '0')}`;
}

/**
 * An oslo.messaging notification in the messagingv2 envelope, as Glance's own are, so existing
 * consumers (Ceilometer-style listeners, an operator's alerting) read it without a new parser.
 * The event types live in their own namespace: never `image.*`, which the enforcer itself reads.
 */
export function osloNotification(eventType: string, priority: 'INFO' | 'WARN', payload: object, nowMs: number): string {
  // A reason may quote Glance; whatever it quotes, no secret leaves in a notification.
  payload = scrubFields(payload);
  const message = {
    message_id: randomUUID(),
    publisher_id: 'glance-quota-enforcer',
    event_type: eventType,
    priority,
    payload,
    timestamp: osloTimestamp(nowMs),
    _unique_id: randomUUID().replace(/-/g, ''),
  };
  return JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': JSON.stringify(message) });
}

/** Publishes the enforcer's notifications; a broker hiccup loses a notification, never an action. */
export class Notifier {
  private channel: ConfirmChannel | undefined;

  constructor(
    private readonly exchange: string,
    private readonly topic: string,
    private readonly durable: boolean,
    private readonly log: Logger,
    /** The longest wait on the broker: a confirm that never comes must not hold enforcement. */
    private readonly timeoutMs = BROKER_TIMEOUT_MS,
  ) {}

  async attach(connection: ChannelModel): Promise<void> {
    const channel = await withTimeout(connection.createConfirmChannel(), this.timeoutMs, 'a new notification channel');
    channel.on('error', (err: Error) => this.log.warn({ err: err.message }, 'notification channel error'));
    channel.on('close', () => {
      if (this.channel === channel) this.channel = undefined;
    });
    await withTimeout(
      channel.assertExchange(this.exchange, 'topic', { durable: this.durable, autoDelete: false }),
      this.timeoutMs,
      `the declaration of ${this.exchange}`,
    );
    this.channel = channel;
  }

  async publish(eventType: string, priority: 'INFO' | 'WARN', payload: object): Promise<void> {
    const channel = this.channel;
    if (!channel) {
      this.log.warn({ eventType }, 'not connected to the broker; notification dropped');
      return;
    }
    const body = osloNotification(eventType, priority, payload, Date.now());
    try {
      channel.publish(this.exchange, `${this.topic}.${priority.toLowerCase()}`, Buffer.from(body), {
        contentType: 'application/json',
        contentEncoding: 'utf-8',
        deliveryMode: 2,
      });
      await withTimeout(channel.waitForConfirms(), this.timeoutMs, `the confirm of ${eventType}`);
    } catch (err) {
      this.log.warn({ eventType, err: (err as Error).message }, 'notification not confirmed by the broker');
    }
  }
}

const EVENT_OF: Record<ActionRecord['action'], string> = {
  deleted: 'quota_enforcer.image.deleted',
  'would-delete': 'quota_enforcer.image.would_delete',
  skipped: 'quota_enforcer.image.skipped',
  protected: 'quota_enforcer.image.protected',
  'not-deletable': 'quota_enforcer.image.not_deletable',
  gone: 'quota_enforcer.image.gone',
};

/**
 * The last set of exceeded resources announced per project, for the projects seen most recently:
 * project ids come from the bus, so the map is bounded (least recently reported first out). A
 * project pushed out only has its next limit.exceeded sent again.
 */
export class ExceededAnnouncements {
  private readonly map: LRUCache<string, string>;
  constructor(max = 10_000) {
    this.map = new LRUCache({ max });
  }

  /** Records `key` for the project; true when it differs from the last one recorded. */
  changed(projectId: string, key: string): boolean {
    const last = this.map.get(projectId) ?? '';
    // '' is the default: a project under its limits takes no room.
    if (key) this.map.set(projectId, key);
    else this.map.delete(projectId);
    return last !== key;
  }

  get size(): number {
    return this.map.size;
  }
}

/**
 * What `consume` tells the bus (PUBLISH_EXCHANGE): one `quota_enforcer.image.*` per audited action,
 * and `quota_enforcer.limit.exceeded` when a project's set of exceeded resources changes, not on
 * every message. Without a notifier, nothing is published.
 */
export class QuotaNotifications {
  private readonly announced = new ExceededAnnouncements();

  constructor(
    private readonly notifier: Notifier | undefined,
    private readonly mode: () => string,
  ) {}

  attach(connection: ChannelModel): Promise<void> {
    return this.notifier?.attach(connection) ?? Promise.resolve();
  }

  async action(a: ActionRecord): Promise<void> {
    await this.notifier?.publish(EVENT_OF[a.action], 'INFO', {
      project_id: a.projectId,
      image_id: a.imageId,
      action: a.action,
      reason: a.reason,
      mode: this.mode(),
      over: a.over,
      usage: a.usage,
      limits: a.limits,
    });
  }

  async report(r: ProjectReport): Promise<void> {
    const key = r.over.join(',');
    if (!this.announced.changed(r.projectId, key) || !key) return;
    await this.notifier?.publish('quota_enforcer.limit.exceeded', 'WARN', {
      project_id: r.projectId,
      over: r.over,
      usage: r.usage,
      limits: r.limits,
      exempt: r.exempt,
      mode: this.mode(),
    });
  }
}
