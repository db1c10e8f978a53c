import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../../src/config.js';
import type { DoorLimits } from '../../src/notification/parse.js';

/** The door's limits as an empty environment configures them (the config schema's defaults). */
export const DOOR: DoorLimits = loadConfig({}).door;

/** Real notifications captured from Glance 25.1 on the lab (see test/fixtures/README.md). */
export const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'glance-25.1');

export interface Capture {
  file: string;
  eventType: string;
  priority: string;
  body: string;
  decoded: { message_id: string; event_type: string; priority: string; payload: unknown; timestamp: string };
}

/** Every captured body of the lab's `verify` run, in the order Glance sent them. */
export function captures(): Capture[] {
  const index = JSON.parse(readFileSync(join(FIXTURES, 'index.json'), 'utf8')) as { file: string; event_type: string; priority: string }[];
  return index.map((e) => ({
    file: e.file,
    eventType: e.event_type,
    priority: e.priority,
    body: readFileSync(join(FIXTURES, 'raw', e.file.replace(/\.json$/, '.body')), 'utf8'),
    decoded: JSON.parse(readFileSync(join(FIXTURES, 'decoded', e.file), 'utf8')),
  }));
}

export function rawBody(name: string): string {
  return readFileSync(join(FIXTURES, 'raw', `${name}.body`), 'utf8');
}

export function quotaTestBodies(): string[] {
  const dir = join(FIXTURES, 'quota-test', 'raw');
  return readdirSync(dir)
    .sort()
    .map((f) => readFileSync(join(dir, f), 'utf8'));
}

/** Re-wrap an edited inner message the way oslo's messagingv2 driver does. */
export function envelope(inner: object): string {
  return JSON.stringify({ 'oslo.version': '2.0', 'oslo.message': JSON.stringify(inner) });
}

export function inner(body: string): Record<string, any> {
  return JSON.parse(JSON.parse(body)['oslo.message']);
}
