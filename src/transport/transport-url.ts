import { ConfigError } from '../errors.js';
import { redactUrl } from '../redact.js';

/** One broker to try, in amqplib's terms. */
export interface BrokerAddress {
  protocol: 'amqp' | 'amqps';
  hostname: string;
  port: number;
  username: string;
  password: string;
  vhost: string;
}

const EXAMPLE = 'rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost';

function decode(part: string, what: string, url: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new ConfigError(`TRANSPORT_URL: the ${what} in '${redactTransportUrl(url)}' is not valid percent-encoding; expected ${EXAMPLE}`);
  }
}

/**
 * oslo.messaging's transport_url, as Glance's own config writes it: several `user:pass@host:port`
 * separated by commas (tried in turn, like oslo's failover), one virtual host, options in the
 * query. `?ssl=1` (or `amqps://`) turns TLS on. An empty virtual host is RabbitMQ's default `/`.
 *
 * @example
 *   parseTransportUrl('rabbit://guest:guest@10.0.0.1:5672,guest:guest@10.0.0.2:5672/openstack?ssl=1')
 */
export function parseTransportUrl(url: string): BrokerAddress[] {
  const m = /^(rabbit|amqp|amqps|kombu\+rabbit):\/\/([^/?#]*)(?:\/([^?#]*))?(?:\?([^#]*))?$/.exec(url.trim());
  if (!m) throw new ConfigError(`TRANSPORT_URL: expected ${EXAMPLE}, got '${redactTransportUrl(url)}'`);
  const [, scheme, hosts = '', rawVhost = '', query = ''] = m;
  const params = new URLSearchParams(query);
  const sslParam = (params.get('ssl') ?? '').toLowerCase();
  const tls = scheme === 'amqps' || ['1', 'true', 'yes', 'on'].includes(sslParam);
  const vhost = rawVhost === '' ? '/' : decode(rawVhost, 'virtual host', url);
  if (hosts === '') throw new ConfigError(`TRANSPORT_URL: no host in '${redactTransportUrl(url)}'; expected ${EXAMPLE}`);
  return hosts.split(',').map((entry) => {
    const at = entry.lastIndexOf('@');
    const creds = at >= 0 ? entry.slice(0, at) : '';
    const hostPort = at >= 0 ? entry.slice(at + 1) : entry;
    const colon = creds.indexOf(':');
    const username = decode(colon >= 0 ? creds.slice(0, colon) : creds, 'user name', url) || 'guest';
    const password = colon >= 0 ? decode(creds.slice(colon + 1), 'password', url) : 'guest';
    const hp = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(hostPort);
    // The host itself is not quoted: with an unencoded '/' or ',' in a password, what was split
    // off as a host may be part of the password.
    if (!hp)
      throw new ConfigError(
        `TRANSPORT_URL: cannot read a host in '${redactTransportUrl(url)}' (a password with / , ? # or @ must be percent-encoded); expected ${EXAMPLE}`,
      );
    const port = hp[2] ? Number(hp[2]) : tls ? 5671 : 5672;
    if (port < 1 || port > 65535) throw new ConfigError(`TRANSPORT_URL: port ${port} is out of range in '${redactTransportUrl(url)}'`);
    return { protocol: tls ? 'amqps' : 'amqp', hostname: hp[1]!.replace(/^\[|\]$/g, ''), port, username, password, vhost };
  });
}

/** The URL with every password replaced, for logs and errors, even when it does not parse. */
export const redactTransportUrl = redactUrl;

export function describeBroker(b: BrokerAddress): string {
  return `${b.protocol}://${b.username}@${b.hostname.includes(':') ? `[${b.hostname}]` : b.hostname}:${b.port}/${encodeURIComponent(b.vhost)}`;
}
