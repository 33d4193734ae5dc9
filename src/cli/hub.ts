import crypto from 'node:crypto';
import type { Settings } from '../config/settings.ts';
import { createLogger } from '../core/logger.ts';
import { HubStore } from '../hub/store.ts';
import { HubSync } from '../hub/sync-service.ts';
import { parseMasterKey } from '../store/crypto.ts';
import { loadDeviceKey } from '../sync/device-key.ts';
import { wrapTenantKey } from '../sync/envelope.ts';
import { CommandError } from './errors.ts';

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

/** `authface hub serve`: sequences and publishes the fleet's changes until stopped. */
export async function hubServe(settings: Settings, opts: { databaseUrl?: string; brokerUrl?: string; prefix: string }): Promise<void> {
  const brokerUrl = opts.brokerUrl ?? settings.AUTHFACE_HUB_BROKER_URL;
  if (!brokerUrl) throw new CommandError('the hub needs the broker its devices use: --broker-url mqtt://… or AUTHFACE_HUB_BROKER_URL');
  const logger = createLogger(settings.LOG_LEVEL);
  const store = await openHub(settings, opts.databaseUrl);
  const sync = await HubSync.start(store, { url: brokerUrl, prefix: opts.prefix, logger });
  logger.info({ broker: brokerUrl.replace(/\/\/[^@/]*@/, '//'), prefix: opts.prefix }, 'hub ready');
  const stop = async () => {
    await sync.close();
    await store.close();
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

/** `authface hub tenant add`: a tenant of the fleet, with its key. */
export async function hubTenantAdd(settings: Settings, opts: { name: string; id?: string; databaseUrl?: string }): Promise<{ tenant_id: string; key_version: number }> {
  const masterKey = hubMasterKey(settings);
  const store = await openHub(settings, opts.databaseUrl);
  try {
    const tenantId = opts.id ?? crypto.randomUUID();
    await store.createTenant(tenantId, opts.name);
    const { keyVersion } = await store.tenantKey(tenantId, masterKey);
    return { tenant_id: tenantId, key_version: keyVersion };
  } finally {
    await store.close();
  }
}

/** `authface hub wrap-key`: the tenant key wrapped to one device's public key, for its sync.tenant_key_file. */
export async function hubWrapKey(settings: Settings, opts: { tenant: string; device: string; publicKey: string; databaseUrl?: string }): Promise<unknown> {
  const masterKey = hubMasterKey(settings);
  const store = await openHub(settings, opts.databaseUrl);
  try {
    if ((await store.pool.query('SELECT 1 FROM hub_tenants WHERE tenant_id = $1', [opts.tenant])).rowCount === 0) throw new CommandError(`no tenant ${opts.tenant} at the hub (authface hub tenant add)`);
    const { key, keyVersion } = await store.tenantKey(opts.tenant, masterKey);
    return wrapTenantKey(key, opts.publicKey, { tenantId: opts.tenant, deviceId: opts.device, keyVersion });
  } finally {
    await store.close();
  }
}

/** `authface sync key`: this device's public key (the key pair is made on first use). */
export function syncKey(settings: Settings): { device_public_key: string } {
  return { device_public_key: loadDeviceKey(settings.dataDir).publicKey };
}
