import { wrapTenantKey } from '../sync/envelope.ts';
import { type FleetNotice, signNotice } from '../sync/notice.ts';
import { syncTopics } from '../sync/protocol.ts';
import type { BrokerAdmin } from './broker-admin.ts';
import { HubError } from './errors.ts';
import type { HubStore } from './store.ts';

/** Publishes a retained message (the hub's broker connection, or the CLI's own). */
export type RetainedPublish = (topic: string, payload: string) => Promise<void>;

/** The notice for one joined device as it stands now: every key version wrapped to it, or its revocation; null for a device that never joined. */
export async function deviceNotice(store: HubStore, tenantId: string, deviceId: string): Promise<FleetNotice | null> {
  const device = (await store.devices.joined(tenantId)).find((d) => d.deviceId === deviceId);
  if (!device) return null;
  const { privateKey } = await store.keys.commandKey(tenantId);
  if (device.revokedAt) {
    return signNotice(privateKey, { kind: 'revoked', tenant_id: tenantId, device_id: deviceId, public_key: device.publicKey, revoked_at: device.revokedAt.toISOString() });
  }
  const keys = (await store.keys.all(tenantId)).map((k) => ({ ...wrapTenantKey(k.key, device.publicKey, { tenantId, deviceId, keyVersion: k.keyVersion }), sinceSeq: k.sinceSeq }));
  return signNotice(privateKey, { kind: 'tenant_keys', tenant_id: tenantId, device_id: deviceId, keys });
}

/** Publishes a device's notice, retained on its notice topic (it reads it at its next connection if it is away). */
export async function sendNotice(store: HubStore, prefix: string, publish: RetainedPublish, tenantId: string, deviceId: string): Promise<FleetNotice | null> {
  const notice = await deviceNotice(store, tenantId, deviceId);
  if (notice) await publish(syncTopics(prefix, tenantId).notice(deviceId), JSON.stringify(notice));
  return notice;
}

export interface Revocation {
  device_id: string;
  revoked_at: string;
  key_version: number;
  /** The devices that were sent the new key version. */
  rekeyed: string[];
  /** Whether its broker client was removed (the hub manages the broker's rights). */
  broker_client_removed: boolean;
}

/**
 * `authface hub device revoke`: the device is marked revoked and the tenant key rotates (one
 * transaction); it is told so first (a signed notice: if it is still connected, it erases its
 * templates and keys at once; if not, when it comes back); every other joined device of the
 * tenant is sent the new version wrapped to its own public key; last, its broker client is
 * removed. Run again on a revoked device, it sends the notices and removes the client again
 * without another rotation (after a broker that was down).
 */
export async function revokeDevice(
  store: HubStore,
  options: { tenantId: string; deviceId: string; prefix: string; publish: RetainedPublish; brokerAdmin?: BrokerAdmin },
): Promise<Revocation> {
  const { tenantId, deviceId, prefix, publish } = options;
  const { revokedAt, key } = await store.devices.revoke(tenantId, deviceId);
  const sent = await sendNotice(store, prefix, publish, tenantId, deviceId);
  if (sent?.kind !== 'revoked') throw new HubError(`device ${deviceId} was not recorded as revoked`);
  const rekeyed: string[] = [];
  for (const d of await store.devices.joined(tenantId)) {
    if (d.revokedAt) continue;
    await sendNotice(store, prefix, publish, tenantId, d.deviceId);
    rekeyed.push(d.deviceId);
  }
  await options.brokerAdmin?.removeDevice(deviceId);
  return { device_id: deviceId, revoked_at: revokedAt.toISOString(), key_version: key.keyVersion, rekeyed, broker_client_removed: options.brokerAdmin !== undefined };
}
