import { z } from 'zod';
import { ServiceError } from '../errors.ts';
import { wrapTenantKey } from '../sync/envelope.ts';
import { MAX_KEY_VERSIONS, wrappedKeySchema } from '../sync/keyring.ts';
import { ed25519PublicKeySchema } from '../sync/signature.ts';
import type { BrokerAdmin } from './broker-admin.ts';
import { ClaimError } from './errors.ts';
import type { TenantKeyVersion } from './keys.ts';
import type { HubStore } from './store.ts';

export const joinRequestSchema = z.strictObject({
  code: z.string().min(16).max(40).describe('The claim code `authface hub device add` printed'),
  public_key: z
    .string()
    .regex(/^[A-Za-z0-9+/]{43}=$/, { error: "an X25519 public key in base64 (44 characters), as `authface sync key` prints it" })
    .describe("The device's X25519 public key: the tenant key comes back wrapped to it (the private key never leaves the device)"),
  signing_key: ed25519PublicKeySchema
    .optional()
    .describe("The device's Ed25519 public key: the hub takes a sync message in this device's name only with its signature. A device of an earlier release sends none, and is heard on the tenant key alone"),
});

export type JoinRequest = z.output<typeof joinRequestSchema>;

/** What a device receives when it joins: all it needs to write its configuration (checked on the device). */
export const joinReplySchema = z.strictObject({
  device_id: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  tenant_id: z.uuid(),
  broker: z.strictObject({
    url: z.string().regex(/^(mqtts?|wss?):\/\//),
    topic_prefix: z.string().min(1).max(64),
    username: z.string().min(1).max(160).optional().describe("The device's own broker client, `<tenant>/<device>` (the hub manages the broker's rights)"),
    password: z.string().min(16).max(128).optional(),
  }),
  tenant_keys: z
    .array(wrappedKeySchema)
    .min(1)
    .max(MAX_KEY_VERSIONS)
    .describe("Every version of the tenant key wrapped to the device's public key (its sync.tenant_key_file): older versions open what was sealed before a rotation"),

  command_public_key: z
    .string()
    .regex(/^[A-Za-z0-9+/]{43}=$/)
    .describe("The Ed25519 key the hub signs this tenant's remote commands, notices and sync messages with (the device's remote_commands.public_key)"),
});

export type JoinReply = z.output<typeof joinReplySchema>;

export interface JoinOptions {
  /** The broker URL the devices use (it may differ from the hub's own). */
  brokerUrl: string;
  prefix: string;
  /** When the hub manages the broker's rights: a broker client of its own for each device. */
  brokerAdmin?: BrokerAdmin;
}

/**
 * A device joining with a claim code (`authface join`): the code is used once, the device's
 * public key registered under the claim's device id, and the tenant key wrapped to it.
 */
export function deviceJoin(store: HubStore, options: JoinOptions): (request: JoinRequest) => Promise<JoinReply> {
  return async ({ code, public_key, signing_key }) => {
    let claimed: { tenantId: string; deviceId: string };
    try {
      claimed = await store.devices.claim(code, public_key, signing_key);
    } catch (err) {
      if (!(err instanceof ClaimError)) throw err;
      throw new ServiceError(err.reason === 'unknown_code' ? 'unauthorized' : err.reason === 'name_taken' ? 'conflict' : 'gone', err.reason, err.message);
    }
    const { tenantId, deviceId } = claimed;
    let keys: { versions: TenantKeyVersion[]; commandKey: string; credentials?: { username: string; password: string } };
    try {
      const versions = await store.keys.all(tenantId);
      const { publicKey } = await store.keys.commandKey(tenantId);
      keys = { versions, commandKey: publicKey, credentials: await options.brokerAdmin?.addDevice(tenantId, deviceId, { legacyName: !signing_key }) };
    } catch (err) {
      // the device got nothing: its code works again
      await store.devices.unclaim(code);
      throw new ServiceError('unavailable', 'join_unavailable', `the hub could not prepare this device's keys or broker client (${(err as Error).message}); try again`);
    }
    const { versions, commandKey, credentials } = keys;
    return {
      device_id: deviceId,
      tenant_id: tenantId,
      broker: { url: options.brokerUrl, topic_prefix: options.prefix, ...credentials },
      tenant_keys: versions.map((k) => ({ ...wrapTenantKey(k.key, public_key, { tenantId, deviceId, keyVersion: k.keyVersion }), sinceSeq: k.sinceSeq })),
      command_public_key: commandKey,
    };
  };
}
