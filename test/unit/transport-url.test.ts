import { describe, expect, it } from 'vitest';
import { describeBroker, parseTransportUrl, redactTransportUrl } from '../../src/transport/transport-url.js';

describe("oslo's transport_url", () => {
  it("reads the lab's single-host URL with the default virtual host", () => {
    expect(parseTransportUrl('rabbit://guest:guest@127.0.0.1:5672/')).toEqual([
      { protocol: 'amqp', hostname: '127.0.0.1', port: 5672, username: 'guest', password: 'guest', vhost: '/' },
    ]);
  });

  it('reads several hosts, each with its own credentials, tried in turn, and a named vhost', () => {
    const brokers = parseTransportUrl('rabbit://a:p%40ss@rabbit1:5672,b:q@rabbit2:5673/openstack');
    expect(brokers.map(describeBroker)).toEqual(['amqp://a@rabbit1:5672/openstack', 'amqp://b@rabbit2:5673/openstack']);
    expect(brokers[0]!.password).toBe('p@ss');
  });

  it('turns TLS on with ?ssl=1 or amqps://, with 5671 as the default port', () => {
    expect(parseTransportUrl('rabbit://u:p@h/?ssl=1')[0]).toMatchObject({ protocol: 'amqps', port: 5671 });
    expect(parseTransportUrl('amqps://u:p@h:5000/v')[0]).toMatchObject({ protocol: 'amqps', port: 5000, vhost: 'v' });
    expect(parseTransportUrl('rabbit://u:p@h/?ssl=0')[0]).toMatchObject({ protocol: 'amqp', port: 5672 });
  });

  it('reads an IPv6 host and a percent-encoded vhost', () => {
    expect(parseTransportUrl('rabbit://u:p@[::1]:5672/%2Fprod')[0]).toMatchObject({ hostname: '::1', vhost: '/prod' });
  });

  it.each(['localhost', 'http://u:p@h/', 'rabbit:///vhost', 'rabbit://u:secret@h:99999/'])('rejects %s with an example and no password', (url) => {
    expect(() => parseTransportUrl(url)).toThrow(/TRANSPORT_URL: /);
    try {
      parseTransportUrl(url);
    } catch (err) {
      expect((err as Error).message).not.toContain('secret');
    }
  });

  it('redacts every password for logs', () => {
    expect(redactTransportUrl('rabbit://a:s1@h1:5672,b:s2@h2/v')).toBe('rabbit://a:***@h1:5672,b:***@h2/v');
  });
});
