import { wrapTenantKey } from '../sync/envelope.ts';
import { type FleetNotice, NOTICE_REQUEST_SKEW_MS, type NoticeRequest, signNotice } from '../sync/notice.ts';
import { isSignedBy } from '../sync/signature.ts';
import { publicKeyFromBase64 } from '../access/signed-command.ts';
import { syncTopics } from '../sync/protocol.ts';
import type { BrokerAdmin } from './broker-admin.ts';
import { HubError } from './errors.ts';
import type { HubStore } from './store.ts';

/** Publishes a retained message (the hub's broker connection, or the CLI's own). */
export type RetainedPublish = (topic: string, payload: string) => Promise<void>;

type JoinedDevice = Awaited<ReturnType<HubStore['devices']['joined']>>[number];

/**
 * Signs the notices of some joined devices as they stand now: every key version wrapped to each,
 * or its revocation. The keys and the command key are read once for all of them.
 */
async function noticesFor(store: HubStore, tenantId: string, devices: readonly JoinedDevice[]): Promise<FleetNotice[]> {
  if (devices.length === 0) return [];
  const { privateKey } = await store.keys.commandKey(tenantId);
  const versions = devices.some((d) => !d.revokedAt) ? await store.keys.all(tenantId) : [];
  return devices.map((device) => {
    const { deviceId } = device;
    if (device.revokedAt) {
      return signNotice(privateKey, { kind: 'revoked', tenant_id: tenantId, device_id: deviceId, public_key: device.publicKey, revoked_at: device.revokedAt.toISOString() });
    }
    const keys = versions.map((k) => ({ ...wrapTenantKey(k.key, device.publicKey, { tenantId, deviceId, keyVersion: k.keyVersion }), sinceSeq: k.sinceSeq }));
    return signNotice(privateKey, { kind: 'tenant_keys', tenant_id: tenantId, device_id: deviceId, keys });
  });
}

/**
 * The notice a device asked for over HTTP (`POST /fleet/v1/notice`), or null. A device that
 * registered a signing key must have signed its request with it, at a time near the hub's; a
 * device of an earlier release (no signing key) is answered on its name, as before. Unknown
 * devices, unsigned or stale requests all get the same null, so the endpoint says nothing of
 * which names exist.
 */
export async function requestedNotice(store: HubStore, request: NoticeRequest): Promise<FleetNotice | null> {
  const { tenant_id: tenantId, device_id: deviceId } = request;
  const sender = (await store.devices.senders(tenantId)).get(deviceId);
  if (!sender) return null;
  if (sender.signingKey) {
    const fresh = request.at !== undefined && Math.abs(Date.parse(request.at) - Date.now()) <= NOTICE_REQUEST_SKEW_MS;
    if (!fresh || !isSignedBy(publicKeyFromBase64(sender.signingKey), 'notice-request', tenantId, request)) return null;
  }
  return deviceNotice(store, tenantId, deviceId);
}

/** The notice of one joined device as it stands now; null for a device that never joined. */
export async function deviceNotice(store: HubStore, tenantId: string, deviceId: string): Promise<FleetNotice | null> {
  const device = (await store.devices.joined(tenantId)).find((d) => d.deviceId === deviceId);
  return device ? (await noticesFor(store, tenantId, [device]))[0] : null;
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
  const joined = await store.devices.joined(tenantId);
  // the revoked device first (while its client may still be connected), then the others
  const told = [...joined.filter((d) => d.deviceId === deviceId), ...joined.filter((d) => !d.revokedAt)];
  const notices = await noticesFor(store, tenantId, told);
  if (notices[0]?.device_id !== deviceId || notices[0].kind !== 'revoked') throw new HubError(`device ${deviceId} was not recorded as revoked`);
  for (const notice of notices) await publish(syncTopics(prefix, tenantId).notice(notice.device_id), JSON.stringify(notice));
  await options.brokerAdmin?.removeDevice(tenantId, deviceId);
  return {
    device_id: deviceId,
    revoked_at: revokedAt.toISOString(),
    key_version: key.keyVersion,
    rekeyed: notices.slice(1).map((n) => n.device_id),
    broker_client_removed: options.brokerAdmin !== undefined,
  };
}
