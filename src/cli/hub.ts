import crypto from 'node:crypto';
import type { Settings } from '../config/settings.ts';
import { createLogger } from '../core/logger.ts';
import { HubStore } from '../hub/store.ts';
import { postgresBiometryStore } from '../hub/biometry-store.ts';
import { startHub } from '../hub/service.ts';
import { EMBEDDING_MODEL } from '../biometrics/embedding.ts';
import { VERSION } from '../service.ts';
import type { LivenessMode } from '../store/tenants.ts';
import { parseMasterKey } from '../store/crypto.ts';
import { loadDeviceKey } from '../sync/device-key.ts';
import { wrapTenantKey } from '../sync/envelope.ts';
import { CommandError } from './errors.ts';

const STOP_GRACE_MS = 5000;

/** The hub's database, from --database-url or AUTHFACE_HUB_DATABASE_URL. */
async function openHub(settings: Settings, databaseUrl?: string): Promise<HubStore> {
  const url = databaseUrl ?? settings.AUTHFACE_HUB_DATABASE_URL;
  if (!url) throw new CommandError('the hub needs its PostgreSQL database: --database-url postgres://… or AUTHFACE_HUB_DATABASE_URL');
  const logger = createLogger(settings.LOG_LEVEL);
  try {
    return await HubStore.open(url, (err) => logger.warn({ problem: err.message }, 'hub: a database connection was dropped; it is replaced on the next query'));
  } catch (err) {
    throw new CommandError(`cannot open the hub database ${url.replace(/\/\/[^@/]*@/, '//')}: ${(err as Error).message}`);
  }
}

function hubMasterKey(settings: Settings): Buffer {
  if (!settings.AUTHFACE_HUB_MASTER_KEY) throw new CommandError('set AUTHFACE_HUB_MASTER_KEY (openssl rand -hex 32): it seals the tenant keys in the hub database');
  return parseMasterKey(settings.AUTHFACE_HUB_MASTER_KEY, 'AUTHFACE_HUB_MASTER_KEY');
}

/**
 * `authface hub serve`: sequences and publishes the fleet's changes, and serves /biometry/v1 and
 * the capture page on the central store (HOST, PORT, PUBLIC_URL as a device), until stopped.
 */
export async function hubServe(settings: Settings, opts: { databaseUrl?: string; brokerUrl?: string; prefix: string }): Promise<void> {
  const brokerUrl = opts.brokerUrl ?? settings.AUTHFACE_HUB_BROKER_URL;
  if (!brokerUrl) throw new CommandError('the hub needs the broker its devices use: --broker-url mqtt://… or AUTHFACE_HUB_BROKER_URL');
  const databaseUrl = opts.databaseUrl ?? settings.AUTHFACE_HUB_DATABASE_URL;
  if (!databaseUrl) throw new CommandError('the hub needs its PostgreSQL database: --database-url postgres://… or AUTHFACE_HUB_DATABASE_URL');
  const logger = createLogger(settings.LOG_LEVEL);
  const hub = await startHub(settings, { databaseUrl, brokerUrl, prefix: opts.prefix, masterKey: hubMasterKey(settings), logger, version: VERSION });
  const stop = async () => {
    // what is committed is in PostgreSQL and what is not is asked again by the devices: a stop
    // does not wait long for a backlog of answers (a reconnect storm) to drain
    setTimeout(() => process.exit(0), STOP_GRACE_MS).unref();
    await hub.close();
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

/**
 * `authface hub tenant add`: a tenant of the fleet, with its key, and an API key for the hub's
 * /biometry/v1 (shown once; only its hash is stored).
 */
export async function hubTenantAdd(
  settings: Settings,
  opts: { name: string; id?: string; databaseUrl?: string; allowedOrigins?: string[]; liveness?: LivenessMode },
): Promise<{ tenant_id: string; key_version: number; api_key: string; allowed_origins: string[] }> {
  const masterKey = hubMasterKey(settings);
  const store = await openHub(settings, opts.databaseUrl);
  try {
    const allowedOrigins = opts.allowedOrigins ?? [];
    const api = postgresBiometryStore(store, { tenantKey: (t) => store.tenantKey(t, masterKey), model: EMBEDDING_MODEL });
    const tenant = await api.tenants.create({ id: opts.id ?? crypto.randomUUID(), name: opts.name, allowedOrigins, livenessMode: opts.liveness ?? 'active' });
    const { keyVersion } = await store.tenantKey(tenant.id, masterKey);
    const { apiKey } = await api.tenants.createKey(tenant.id);
    return { tenant_id: tenant.id, key_version: keyVersion, api_key: apiKey, allowed_origins: allowedOrigins };
  } finally {
    await store.close();
  }
}

/** `authface hub wrap-key`: the tenant key wrapped to one device's public key, for its sync.tenant_key_file. */
export async function hubWrapKey(settings: Settings, opts: { tenant: string; device: string; publicKey: string; databaseUrl?: string }): Promise<unknown> {
  const masterKey = hubMasterKey(settings);
  const store = await openHub(settings, opts.databaseUrl);
  try {
    if (!(await store.hasTenant(opts.tenant))) throw new CommandError(`no tenant ${opts.tenant} at the hub (authface hub tenant add)`);
    const { key, keyVersion } = await store.tenantKey(opts.tenant, masterKey);
    return wrapTenantKey(key, opts.publicKey, { tenantId: opts.tenant, deviceId: opts.device, keyVersion });
  } finally {
    await store.close();
  }
}

/**
 * `authface hub status`: a tenant's log (head, where retention cut it), its devices (online or
 * not, how far behind, diverged) and the conflicts waiting for an admin.
 */
export async function hubStatus(settings: Settings, opts: { tenant: string; databaseUrl?: string }): Promise<unknown> {
  const store = await openHub(settings, opts.databaseUrl);
  try {
    if (!(await store.hasTenant(opts.tenant))) throw new CommandError(`no tenant ${opts.tenant} at the hub (authface hub tenant add)`);
    const devices = await store.devices(opts.tenant);
    return {
      tenant_id: opts.tenant,
      head: await store.headSeq(opts.tenant),
      log_starts_after: await store.compactedSeq(opts.tenant),
      devices: devices.map((d) => ({ device_id: d.deviceId, state: d.state, applied_seq: d.appliedSeq, lag: d.lag, diverged: d.diverged, boot: d.boot })),
      conflicts: (await store.conflicts(opts.tenant)).map((c) => ({ change_id: c.changeId, origin: c.origin, external_user_id: c.externalUserId, reason: c.reason })),
    };
  } finally {
    await store.close();
  }
}

/** `authface sync key`: this device's public key (the key pair is made on first use). */
export function syncKey(settings: Settings): { device_public_key: string } {
  return { device_public_key: loadDeviceKey(settings.dataDir).publicKey };
}
