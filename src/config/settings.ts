import { DEFAULT_PAD_THRESHOLD } from '../liveness/index.ts';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { MOBILEFACENET } from '../biometrics/matchers/index.ts';
import { OperatorError } from '../errors.ts';

/**
 * Every runtime option of the service, read from the environment. This table is the single
 * source of truth: it validates the environment at start and documents each option
 * (`authface config` prints it; the README's configuration table is generated from it).
 */
const defaultWorkers = Math.max(1, os.availableParallelism() - 1);

/** The directory the service is installed in (from src/config or dist/config alike). */
export const INSTALL_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

const port = z.coerce.number().int().min(0).max(65535);
const positiveInt = z.coerce.number().int().positive();
const unitInterval = z.coerce.number().min(0).max(1);
const masterKey = z
  .string()
  .regex(/^([0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=)$/, { error: 'must be a 32-byte key written as 64 hex or 44 base64 characters (openssl rand -hex 32)' });

export const settingsSpec = {
  PORT: { schema: port.default(8080), doc: 'TCP port of the HTTP API and the capture page.' },
  HOST: {
    schema: z.string().min(1).default('127.0.0.1'),
    doc: 'Interface to listen on. The default serves this machine only; use 0.0.0.0 to serve the local network.',
  },
  PUBLIC_URL: {
    // `localhost:8095` parses as a URL of scheme "localhost:": biometry_url would be unusable
    schema: z
      .url({ protocol: /^https?$/, error: 'must be an http:// or https:// address, such as https://doors.example.com or http://localhost:8080' })
      .refine((u) => !/[?#]/.test(u), { error: 'must be a base address, without ? or #' })
      .optional(),
    doc: 'Base URL that people reach this service on; `biometry_url` is built from it. Default `http://localhost:<PORT>`.',
  },
  AUTHFACE_TRUSTED_PROXIES: {
    schema: z
      .string()
      .default('')
      .transform((v) => v.split(',').map((x) => x.trim()).filter(Boolean))
      .pipe(z.array(z.union([z.ipv4(), z.ipv6(), z.cidrv4(), z.cidrv6()], { error: 'an IP address or a CIDR block (10.0.0.0/8)' }))),
    doc: "Comma-separated addresses or CIDR blocks of reverse proxies in front of this service. Only a request from one of them has its client address read from X-Forwarded-For (the console's sign-in throttle counts failures per name and address); from anyone else the header is ignored. Default: none.",
  },
  AUTHFACE_DATA_DIR: {
    schema: z.string().min(1).optional(),
    doc: 'Directory of the SQLite database and the key files. Default: `data/` in the install directory, whatever the working directory, so the service and every CLI command use the same one.',
  },
  AUTHFACE_MASTER_KEY: {
    schema: masterKey.optional(),
    doc: 'AES-256 key (64 hex characters or 44 base64 characters) that encrypts embeddings at rest. Without it a key file `master.key` (mode 0600) is created in the data directory on first start.',
  },
  AUTHFACE_SESSION_TTL_SECONDS: {
    schema: positiveInt.max(86_400).default(600),
    doc: 'Lifetime of a session and its capture link.',
  },
  AUTHFACE_RETENTION_DAYS: {
    schema: positiveInt.max(3650).default(90),
    doc: 'Finished sessions and audit events older than this many days are deleted.',
  },
  AUTHFACE_MATCH_THRESHOLD: {
    schema: unitInterval.default(MOBILEFACENET.matchThreshold),
    doc: 'Similarity (MobileFaceNet, the model of new templates) at or above which verify (1:1) accepts a face, and the lowest threshold identify ever uses. People decided by an older model are decided at its own measured thresholds (README, "Moving to a new model").',
  },
  AUTHFACE_PAD_THRESHOLD: {
    schema: unitInterval.default(DEFAULT_PAD_THRESHOLD),
    doc: 'The face anti-spoofing network\'s floor: a capture session with a usable frame that scores below it fails as `spoof_detected`, in both liveness modes (README, "The capture page and liveness"). Raise it to refuse more attacks and more genuine faces; a tenant, a device or a door may set its own (`--pad-threshold` of `tenant create|update` and `hub tenant add|update`, a device\'s `thresholds.pad`, a door\'s `pad_threshold`; the door\'s comes first, then the tenant\'s, then the device\'s).',
  },
  AUTHFACE_TARGET_FPIR: {
    schema: z.coerce.number().min(1e-7).max(0.1).default(0.001),
    doc: "Share of strangers that identify (1:N) may name as somebody. The identify threshold follows the gallery's size to keep to it (README, \"1:N and strangers\").",
  },
  AUTHFACE_IDENTIFY_MARGIN: {
    schema: z.coerce.number().min(0).max(0.2).default(MOBILEFACENET.identifyMargin),
    doc: 'Identify refuses (`ambiguous_match`) when the best and second-best people (MobileFaceNet scores) are within this of each other. 0 turns the check off.',
  },
  AUTHFACE_FACE_ONLY_MAX_GALLERY: {
    schema: positiveInt.default(30_000),
    doc: 'Above this many enrolled people in a tenant, `authface doctor` warns that face alone is not enough at its doors and suggests `factor: face+pin`. The default is the largest modelled gallery at which MobileFaceNet, at the identify rule, turns away at most 40 % of LFW\'s mated photos (`face_only_limit` of `npm run eval:identify`; README, "1:N and strangers").',
  },
  AUTHFACE_DUPLICATE_THRESHOLD: {
    schema: unitInterval.default(MOBILEFACENET.duplicateThreshold),
    doc: 'Similarity (MobileFaceNet) at or above which enrollment and update_embedding report a `conflict` with another user.',
  },
  AUTHFACE_WORKERS: {
    schema: positiveInt.max(64).default(defaultWorkers),
    doc: 'Worker threads that analyse frames. Default: CPU cores minus one (at least one).',
  },
  AUTHFACE_QUEUE_SIZE: {
    schema: positiveInt.max(10_000).default(16),
    doc: "Frames one tenant (and, separately, the device's doors) may have waiting for a worker; beyond that the API answers 503 with a Retry-After computed from the queue. Tenants take turns, the doors go first.",
  },
  AUTHFACE_FRAME_TIMEOUT_MS: {
    schema: positiveInt.min(100).max(120_000).default(5000),
    doc: 'A frame still being analysed after this long is dropped (503 analysis_timeout) and its worker replaced.',
  },
  AUTHFACE_MAX_IMAGE_BYTES: {
    schema: positiveInt.default(6 * 1024 * 1024),
    doc: 'Largest accepted image upload (413 above it).',
  },
  AUTHFACE_MAX_IMAGE_PIXELS: {
    schema: positiveInt.default(25_000_000),
    doc: 'Largest accepted image area in pixels (413 above it), read from the image header before decoding.',
  },
  AUTHFACE_MAX_IMAGE_SIDE: {
    schema: positiveInt.min(256).max(65_535).default(8192),
    doc: 'Longest accepted image side in pixels (413 above it), read from the header before decoding.',
  },
  AUTHFACE_MAX_ASPECT_RATIO: {
    schema: z.coerce.number().min(1).max(100).default(4),
    doc: 'Largest accepted ratio of the long side to the short side (400 above it), read from the header before decoding.',
  },
  AUTHFACE_BACKEND: {
    schema: z.enum(['auto', 'wasm', 'tfjs-node']).default('auto'),
    doc: 'TensorFlow backend of the face engine: `auto` uses @tensorflow/tfjs-node when it is installed, else WebAssembly.',
  },
  AUTHFACE_DEVICE_CONFIG: {
    schema: z.string().min(1).optional(),
    doc: 'Device configuration file (YAML, see firmware-config/README.md). With it the service drives doors, the kiosk and MQTT; without it, it is the API alone.',
  },
  AUTHFACE_METRICS_TOKEN: {
    schema: z.string().min(24, { error: 'use at least 24 characters' }).optional(),
    doc: 'Bearer token for `/metrics`. Without it, `/metrics` answers this machine only (loopback, not relayed by a proxy).',
  },
  AUTHFACE_HUB_DATABASE_URL: {
    schema: z.string().regex(/^postgres(ql)?:\/\//, { error: 'a postgres:// URL' }).optional(),
    doc: 'The hub only (`authface hub …`): its PostgreSQL database, e.g. `postgres://authface@db/authface`. With a primary and standbys, name every host: `postgres://authface@db1:5432,db2:5432/authface?target_session_attrs=read-write`; the hub writes to the one that accepts writes and finds the new one after a failover.',
  },
  AUTHFACE_HUB_BROKER_URL: {
    schema: z.string().regex(/^(mqtts?|wss?):\/\//, { error: 'use mqtt://, mqtts://, ws:// or wss://' }).optional(),
    doc: 'The hub only: the broker it shares with the devices (their `mqtt.url`).',
  },
  AUTHFACE_HUB_DEVICE_BROKER_URL: {
    schema: z.string().regex(/^(mqtts?|wss?):\/\//, { error: 'use mqtt://, mqtts://, ws:// or wss://' }).optional(),
    doc: 'The hub only: the broker URL a device is given when it joins (`authface join`), when the devices reach the broker at another address than the hub (default: the hub\'s broker URL).',
  },
  AUTHFACE_HUB_BROKER_ACL: {
    schema: z.enum(['none', 'mosquitto-dynsec']).optional(),
    doc: "The hub only, and `authface hub serve` will not start without it: `mosquitto-dynsec`: the broker runs Mosquitto's dynamic security plugin (firmware-config/mosquitto/dynsec.conf) and the hub's broker user (in its URL) holds the plugin's admin role; each device that joins gets a broker client of its own that may publish only its own state and events and read only its tenant's log and its own command topic (firmware-config/README.md, \"Broker rights\"). `none`: a broker without per-device rights, or whose users and ACLs are managed by hand; on an open broker any client reads every tenant's log (sealed templates, user ids) and can delay or drop messages, though it can forge none (README, \"Security\").",
  },
  AUTHFACE_HUB_BROKER_CA_FILE: {
    schema: z.string().min(1).optional(),
    doc: "The hub only: CA certificate (PEM) that signed the broker's TLS certificate, for an `mqtts://` or `wss://` broker with a private CA (the devices' `mqtt.ca_file`). Broker credentials go in the URL (`mqtts://hub:password@broker`).",
  },
  AUTHFACE_HUB_LOG_RETENTION_DAYS: {
    schema: positiveInt.max(3650).default(30),
    doc: "The hub only: each tenant's change log keeps this many days (deletions too, then their id goes from the log); a device offline for longer loads a snapshot when it returns.",
  },
  AUTHFACE_HUB_MASTER_KEY: {
    schema: masterKey.optional(),
    doc: "The hub only: AES-256 key (64 hex or 44 base64 characters) that seals the tenants' keys in the hub's database. Keep it out of the database's backups.",
  },
  LOG_LEVEL: {
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    doc: 'Log verbosity (logs never contain images, embeddings, keys or tokens).',
  },
} as const;

type Spec = typeof settingsSpec;
export type Settings = { [K in keyof Spec]: z.output<Spec[K]['schema']> } & { publicUrl: string; dataDir: string };

export class SettingsError extends OperatorError {}

export function loadSettings(env: NodeJS.ProcessEnv = process.env): Settings {
  const shape = Object.fromEntries(Object.entries(settingsSpec).map(([k, v]) => [k, v.schema])) as {
    [K in keyof Spec]: Spec[K]['schema'];
  };
  const input = Object.fromEntries(Object.keys(settingsSpec).map((k) => [k, env[k] === '' ? undefined : env[k]]));
  const parsed = z.object(shape).safeParse(input);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    throw new SettingsError(`invalid configuration: ${problems.join('; ')}`);
  }
  const s = parsed.data;
  const publicUrl = (s.PUBLIC_URL ?? `http://localhost:${s.PORT}`).replace(/\/+$/, '');
  return { ...s, publicUrl, dataDir: path.resolve(s.AUTHFACE_DATA_DIR ?? path.join(INSTALL_DIR, 'data')) } as Settings;
}

/** Markdown table of every option, for the README and `authface config`. */
export function settingsTable(): string {
  const rows = Object.entries(settingsSpec).map(([name, { schema, doc }]) => {
    const def = (schema as z.ZodType).safeParse(undefined);
    const shown = def.success && def.data !== undefined && String(def.data) !== '' ? `\`${String(def.data)}\`` : '–';
    return `| \`${name}\` | ${name === 'AUTHFACE_WORKERS' ? 'cores − 1' : shown} | ${doc} |`;
  });
  return ['| variable | default | meaning |', '|---|---|---|', ...rows].join('\n');
}
