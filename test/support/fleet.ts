import fs from 'node:fs';
import { publicKeyFromBase64 } from '../../src/access/signed-command.ts';
import { deviceJoin } from '../../src/hub/join.ts';
import type { HubStore } from '../../src/hub/store.ts';
import { loadDeviceKey, loadSigningKey } from '../../src/sync/device-key.ts';
import { TenantKeyring, type WrappedKey, unwrapKeys } from '../../src/sync/keyring.ts';
import type { DeviceSyncOptions } from '../../src/sync/device-sync.ts';

export interface JoinedTestDoor {
  deviceId: string;
  /** The tenant key wrapped to the door, as its sync.tenant_key_file holds it (writeKeyFile). */
  tenantKeys: WrappedKey[];
  /** The hub's key, as the door's remote_commands.public_key holds it. */
  hubPublicKey: string;
  /** What DeviceSync needs of the join: the device, its tenant, its keyring and the hub's key. */
  syncOptions: Pick<DeviceSyncOptions, 'deviceId' | 'tenantId' | 'keyring' | 'hubKey'>;
}

/**
 * A door joined as `authface join` joins one: a claim code from the hub (`hub device add`), traded
 * at the hub's join endpoint for the tenant key wrapped to the door's own key pair (made in
 * `dataDir`), and the hub's key; the door's signing key is registered with the hub.
 */
export async function joinTestDoor(hub: HubStore, opts: { tenantId: string; deviceId: string; dataDir: string; brokerUrl: string; prefix: string }): Promise<JoinedTestDoor> {
  fs.mkdirSync(opts.dataDir, { recursive: true });
  const { code } = await hub.devices.add(opts.tenantId, opts.deviceId, 600);
  const own = loadDeviceKey(opts.dataDir);
  const reply = await deviceJoin(hub, { brokerUrl: opts.brokerUrl, prefix: opts.prefix })({ code, public_key: own.publicKey, signing_key: loadSigningKey(opts.dataDir).publicKey });
  const keyring = new TenantKeyring(reply.tenant_id, unwrapKeys(reply.tenant_keys, own.privateKeyPem, { tenantId: reply.tenant_id, deviceId: reply.device_id }));
  return { deviceId: reply.device_id, tenantKeys: reply.tenant_keys, hubPublicKey: reply.command_public_key, syncOptions: { deviceId: reply.device_id, tenantId: reply.tenant_id, keyring, hubKey: publicKeyFromBase64(reply.command_public_key) } };
}
