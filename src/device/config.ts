import fs from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { OperatorError } from '../errors.ts';

/**
 * The device configuration file (YAML): which doors this box drives, with which relay, camera,
 * broker and policy. One schema validates the file at start (errors name the bad key) and
 * documents every option (firmware-config/README.md is generated from it by `authface device schema`).
 */

const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, { error: 'use 1-64 letters, digits, - or _ (it is an MQTT topic level)' });
const time = z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, { error: 'use HH:MM, 24-hour' });
const day = z.enum(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']);
const liveness = z.enum(['active', 'passive']);

/** Whether this runtime knows the IANA time zone (a typo such as Europe/Pairs is not one). */
function isTimeZone(name: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: name });
    return true;
  } catch {
    return false;
  }
}

const relay = z
  .strictObject({
    driver: z.enum(['auto', 'gpio', 'simulated']).default('auto').describe('`gpio` drives a GPIO line through onoff; `simulated` only records pulses; `auto` uses GPIO where the board has it.'),
    pin: z.int().min(0).max(1023).default(17).describe('GPIO line (sysfs number) of the relay.'),
    active_low: z.boolean().default(false).describe('The relay closes when the line is low.'),
    pulse_ms: z.int().min(50).max(60_000).default(3000).describe('How long the relay stays closed for one opening.'),
  })
  .describe('The lock relay.');

const contact = z
  .strictObject({
    driver: z.enum(['auto', 'gpio', 'simulated']).default('auto').describe('As for the relay.'),
    pin: z.int().min(0).max(1023).describe('GPIO line of the door contact.'),
    open_when_high: z.boolean().default(true).describe('The line reads 1 while the door is open.'),
    held_open_seconds: z.int().min(1).max(3600).default(30).describe('After this long open, a `door_held_open` event is sent.'),
  })
  .describe('Optional door contact: raises `door_forced` when the door opens without a grant and `door_held_open` when it stays open.');

const door = z
  .strictObject({
    id: id.describe('Door id (MQTT topic level, kiosk `?door=`).'),
    name: z.string().min(1).max(100).optional().describe('Display name shown on the kiosk.'),
    liveness: liveness.optional().describe('Liveness at this door; defaults to the device-wide `liveness`.'),
    pad_threshold: z.number().min(0).max(1).optional().describe("The anti-spoofing network's floor at this door (a session with a usable frame that scores below it fails as `spoof_detected`); defaults to the tenant's floor (`authface hub tenant update --pad-threshold`), else the device's `thresholds.pad`."),
    factor: z
      .enum(['face', 'face+pin'])
      .default('face')
      .describe('`face+pin`: the kiosk asks for the person\'s PIN first, and the face is compared only with the people holding that PIN (1:1 instead of 1:N). For large sites (`authface doctor` says when).'),
    allow: z
      .strictObject({
        groups: z.array(id).min(1).optional().describe('Only members of these groups may open (default: everyone enrolled in the tenant).'),
        schedule: z
          .strictObject({
            timezone: z
              .string()
              .refine(isTimeZone, { error: (i) => `unknown time zone "${String(i.input)}" (use an IANA name such as Europe/Paris or UTC)` })
              .default('UTC')
              .describe('IANA time zone of the windows, e.g. Europe/Paris.'),
            windows: z
              .array(
                z.strictObject({
                  days: z.array(day).min(1).describe('Days the window starts on: mon … sun.'),
                  from: time.describe('Opening time, HH:MM.'),
                  to: time.describe('Closing time, HH:MM (exclusive).'),
                }),
              )
              .min(1)
              .describe('Weekly windows in which the door may open; `to` before `from` spans midnight.'),
          })
          .optional()
          .describe('Optional weekly schedule (default: always).'),
      })
      .default({})
      .describe('Who may open this door, and when.'),
    relay: relay.default({ driver: 'auto', pin: 17, active_low: false, pulse_ms: 3000 }),
    contact: contact.optional(),
  })
  .describe('A door this device controls.');

const mqtt = z
  .strictObject({
    url: z.string().regex(/^(mqtts?|wss?):\/\//, { error: 'use mqtt://, mqtts://, ws:// or wss://' }).optional().describe('Broker to connect to. Without it an embedded broker is started (see `embedded`).'),
    username: z.string().optional().describe('Broker user name.'),
    password_file: z.string().optional().describe('File holding the broker password (kept out of this file).'),
    ca_file: z.string().optional().describe('CA certificate (PEM) for mqtts://.'),
    cert_file: z.string().optional().describe('Client certificate (PEM) for mutual TLS.'),
    key_file: z.string().optional().describe('Client key (PEM) for mutual TLS.'),
    reject_unauthorized: z.boolean().default(true).describe('Refuse brokers whose certificate does not verify.'),
    topic_prefix: id.default('authface').describe('First topic level: `<prefix>/<device_id>/…`.'),
    protocol_version: z
      .union([z.literal(4), z.literal(5)])
      .default(5)
      .describe('MQTT version towards `url`: 5 lets the device refuse retained commands that the broker delivers live and cap what the broker sends it; use 4 only for a broker without MQTT 5. The embedded broker speaks 3.1.1.'),
    max_packet_bytes: z.int().min(1024).max(16 * 1024 * 1024).default(65_536).describe('Largest MQTT packet accepted: the embedded broker closes a connection that sends a larger one; an MQTT 5 broker is asked not to send larger ones.'),
    home_assistant: z
      .strictObject({
        discovery: z
          .boolean()
          .default(true)
          .describe('Publish Home Assistant MQTT discovery for each door (a lock, a contact sensor, a last-access sensor) on the broker of `url`. Turned off, the device removes what it published.'),
        discovery_prefix: id.default('homeassistant').describe("Home Assistant's discovery prefix."),
      })
      .default({ discovery: true, discovery_prefix: 'homeassistant' })
      .describe('Home Assistant (README, "Home Assistant"). Only with a broker of your own (`url`).'),
    embedded: z
      .strictObject({
        host: z.string().default('127.0.0.1').describe('Interface of the embedded broker.'),
        port: z.int().min(0).max(65535).default(1883).describe('Port of the embedded broker.'),
        users_file: z
          .string()
          .optional()
          .describe('Broker users (name, role admin or observer, scrypt hash), made with `authface broker passwd`. Without it only the device itself may connect.'),
      })
      .default({ host: '127.0.0.1', port: 1883 })
      .describe('The embedded broker used when no `url` is given. It refuses anonymous clients; see firmware-config/README.md, "MQTT security".'),
  })
  .default({
    reject_unauthorized: true,
    topic_prefix: 'authface',
    protocol_version: 5,
    max_packet_bytes: 65_536,
    home_assistant: { discovery: true, discovery_prefix: 'homeassistant' },
    embedded: { host: '127.0.0.1', port: 1883 },
  })
  .describe('MQTT: access events, device status, commands.');

const remoteCommands = z
  .strictObject({
    enabled: z.boolean().default(false).describe('Accept remote commands (unlock, open_session) on the MQTT command topic. Off by default: the door opens for a face only.'),
    public_key: z
      .string()
      .regex(/^[A-Za-z0-9+/]{43}=$/, { error: 'an Ed25519 public key in base64 (44 characters), as `authface command keygen` prints it' })
      .optional()
      .describe("Ed25519 public key (base64) of the admin whose signature every command must carry. In a fleet it is the hub's key (`authface join` writes it): it also signs everything the hub sends this device."),
    max_age_seconds: z.int().min(5).max(300).default(30).describe('A command issued longer ago than this is refused.'),
    clock_skew_seconds: z.int().min(0).max(60).default(5).describe('A command issued this far in the future is still accepted (clocks differ a little).'),
    unlocks_per_minute: z.int().min(1).max(60).default(6).describe('Remote openings allowed per door in any 60 seconds.'),
  })
  .default({ enabled: false, max_age_seconds: 30, clock_skew_seconds: 5, unlocks_per_minute: 6 })
  .describe('Remote commands over MQTT, signed with Ed25519 (see firmware-config/README.md, "Remote commands").');

export const deviceConfigSchema = z
  .strictObject({
    device_id: id.describe('This device (MQTT topic level).'),
    tenant_id: z.uuid().optional().describe('Tenant whose users the doors know (default: the tenant named `default`).'),
    liveness: liveness
      .optional()
      .describe("Liveness of kiosk and turnstile sessions unless a door says otherwise. Without it a fleet door follows its hub tenant's (`authface hub tenant update --liveness`, as the door last heard it) and a standalone device uses `active`."),
    thresholds: z
      .strictObject({
        match: z.number().min(0).max(1).optional().describe('Overrides AUTHFACE_MATCH_THRESHOLD on this device.'),
        duplicate: z.number().min(0).max(1).optional().describe('Overrides AUTHFACE_DUPLICATE_THRESHOLD on this device.'),
        pad: z.number().min(0).max(1).optional().describe("Overrides AUTHFACE_PAD_THRESHOLD (the anti-spoofing network's floor) on this device; a tenant's own floor and a door's `pad_threshold` come first."),
      })
      .default({})
      .describe('Similarity thresholds (default: the service settings; see the README, "Thresholds").'),
    groups: z
      .record(id, z.array(z.string().min(1).max(128)))
      .default({})
      .describe('User groups: group name → external_user_ids. A fleet device (`sync`) has none here: the hub sets them (`authface hub group add`).'),
    doors: z.array(door).min(1).describe('The doors of this device.'),
    camera: z
      .strictObject({
        device: z.string().default('/dev/video0').describe('Video device of the turnstile camera.'),
        width: z.int().min(160).max(4096).default(640).describe('Capture width.'),
        height: z.int().min(120).max(4096).default(480).describe('Capture height.'),
        interval_ms: z.int().min(50).max(10_000).default(250).describe('Time between two frames in turnstile mode.'),
        driver: z.enum(['fswebcam', 'simulated']).default('fswebcam').describe('`fswebcam` grabs frames through node-webcam; `simulated` plays image files (tests, demos).'),
        simulated_images: z.array(z.string()).default([]).describe('Image files the simulated camera plays in a loop.'),
      })
      .optional()
      .describe('The camera of `authface turnstile`. A kiosk-only device leaves it out: the kiosk uses the browser camera.'),
    mqtt,
    remote_commands: remoteCommands,
    pin: z
      .strictObject({
        max_failures: z.int().min(1).max(100).default(5).describe('Failed face+pin attempts at one door within `window_seconds` that lock its PIN entry.'),
        window_seconds: z.int().min(10).max(86_400).default(300).describe('The window in which failures are counted.'),
        lockout_seconds: z.int().min(10).max(86_400).default(300).describe('How long a door refuses PINs after too many failures.'),
      })
      .default({ max_failures: 5, window_seconds: 300, lockout_seconds: 300 })
      .describe('Rate limit of the PIN at `face+pin` doors (each door counts its own failures; every failure and lockout is audited).'),
    sync: z
      .strictObject({
        tenant_key_file: z
          .string()
          .describe("The tenant key wrapped for this device (every version): `authface join` writes it, or make it at the hub with `authface hub wrap-key --tenant <tenant_id> --device <device_id> --public-key <key> --signing-key <key>`, with the keys `authface sync key` prints here (it registers the device, and prints the hub's key for `remote_commands.public_key`). The device adds the versions the hub sends after a rotation."),
        hub_url: z
          .url({ protocol: /^https?$/ })
          .optional()
          .describe("The hub's URL (`authface join` writes it): when the broker turns this device away, it asks the hub for its notice there (a device the hub revoked erases its templates and keys)."),
      })
      .optional()
      .describe('Fleet sync through a hub: enrolments, updates and deletions made at any door of the tenant reach every other (README, "A fleet"). Needs `mqtt.url`, the broker the hub uses, and `tenant_id`, the hub\'s tenant.'),
    kiosk: z
      .strictObject({
        door: id.optional().describe('Door of the kiosk screen (default: the first door).'),
        cooldown_seconds: z.int().min(0).max(600).default(5).describe('The same person is not processed again at a door within this time.'),
        result_seconds: z.int().min(1).max(60).default(3).describe('How long the granted or denied screen stays.'),
      })
      .default({ cooldown_seconds: 5, result_seconds: 3 })
      .describe('The kiosk screen (the Electron shell shows AUTHFACE_KIOSK_URL, set by the install script).'),
    turnstile: z
      .strictObject({ door: id.optional().describe('Door of `authface turnstile` (default: the first door).') })
      .default({})
      .describe('Headless turnstile mode.'),
  })
  .superRefine((c, ctx) => {
    const ids = new Set<string>();
    c.doors.forEach((d, i) => {
      if (ids.has(d.id)) ctx.addIssue({ code: 'custom', path: ['doors', i, 'id'], message: `door id ${d.id} is used twice` });
      ids.add(d.id);
      // a fleet door's groups come from the hub: one it does not know yet lets no one in
      for (const g of d.allow.groups ?? []) {
        if (!c.sync && !c.groups[g]) ctx.addIssue({ code: 'custom', path: ['doors', i, 'allow', 'groups'], message: `group ${g} is not defined under groups` });
      }
    });
    if (c.sync && Object.keys(c.groups).length > 0) {
      ctx.addIssue({ code: 'custom', path: ['groups'], message: 'a fleet device takes its groups from the hub: remove groups here and use authface hub group add' });
    }
    if (c.sync && !c.mqtt.url) ctx.addIssue({ code: 'custom', path: ['mqtt', 'url'], message: 'sync needs the broker the hub uses: set mqtt.url' });
    if (c.sync && !c.tenant_id) ctx.addIssue({ code: 'custom', path: ['tenant_id'], message: "sync needs the hub's tenant id (authface hub tenant add prints it)" });
    if (c.sync && !c.remote_commands.public_key) {
      ctx.addIssue({ code: 'custom', path: ['remote_commands', 'public_key'], message: "sync needs the hub's key, which signs everything the hub sends: authface join writes it (authface hub wrap-key prints it as hub_public_key)" });
    }
    if (c.remote_commands.enabled && !c.remote_commands.public_key) {
      ctx.addIssue({ code: 'custom', path: ['remote_commands', 'public_key'], message: 'remote commands are enabled: give the public key of the admin who signs them (authface command keygen)' });
    }
    for (const [key, value] of [['kiosk', c.kiosk.door], ['turnstile', c.turnstile.door]] as const) {
      if (value && !ids.has(value)) ctx.addIssue({ code: 'custom', path: [key, 'door'], message: `no door ${value}` });
    }
  });

export type DeviceConfig = z.output<typeof deviceConfigSchema>;
export type DoorConfig = DeviceConfig['doors'][number];
export type CameraConfig = NonNullable<DeviceConfig['camera']>;

export class DeviceConfigError extends OperatorError {}

/** Reads and validates the device file; every problem is reported with the key it concerns. */
export function loadDeviceConfig(file: string): DeviceConfig {
  let raw: unknown;
  try {
    raw = parseYaml(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new DeviceConfigError(`${file}: ${(err as Error).message.split('\n')[0]}`);
  }
  return parseDeviceConfig(raw, file);
}

export function parseDeviceConfig(raw: unknown, source = 'device config'): DeviceConfig {
  const parsed = deviceConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(top level)'}: ${i.message}`);
    throw new DeviceConfigError(`${source} is not valid:\n${problems.join('\n')}`);
  }
  return parsed.data;
}

/** A door's own anti-spoofing floor, if it sets one (else the device's, else the service setting). */
export function doorPadThreshold(config: DeviceConfig, doorId: string | null): number | undefined {
  return config.doors.find((d) => d.id === doorId)?.pad_threshold;
}

/**
 * A door's liveness mode: its own, else the device's, else (a fleet door) its tenant's as the hub
 * last set it, else active.
 */
export function doorLiveness(config: DeviceConfig, door: DoorConfig, tenantMode?: 'active' | 'passive'): 'active' | 'passive' {
  return door.liveness ?? config.liveness ?? (config.sync && tenantMode ? tenantMode : 'active');
}

/** A markdown reference of every option, generated from the schema (firmware-config/README.md). */
export function deviceConfigReference(): string {
  const schema = z.toJSONSchema(deviceConfigSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  const rows: string[] = [];
  walk(schema, '', rows);
  return ['| key | type | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}

interface JsonSchema {
  type?: string | string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  properties?: Record<string, JsonSchema>;
  items?: JsonSchema;
  additionalProperties?: JsonSchema | boolean;
  anyOf?: JsonSchema[];
}

function walk(s: JsonSchema, prefix: string, rows: string[]): void {
  for (const [key, child] of Object.entries(s.properties ?? {})) {
    const name = prefix ? `${prefix}.${key}` : key;
    const node = child.anyOf?.find((c) => c.type !== 'null') ?? child;
    const type = node.enum ? node.enum.map((e) => `\`${String(e)}\``).join(' \\| ') : node.type === 'array' ? `list of ${node.items?.type ?? 'items'}` : String(node.type ?? 'object');
    const def = child.default !== undefined && typeof child.default !== 'object' ? `\`${String(child.default)}\`` : '';
    rows.push(`| \`${name}\` | ${type} | ${def} | ${(child.description ?? node.description ?? '').replace(/\|/g, '\\|')} |`);
    if (node.properties) walk(node, name, rows);
    if (node.type === 'array' && node.items?.properties) walk(node.items, `${name}[]`, rows);
  }
}
