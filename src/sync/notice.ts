import crypto from 'node:crypto';
import { z } from 'zod';
import { canonicalJson } from './envelope.ts';
import { signatureSchema } from './signature.ts';
import { MAX_KEY_VERSIONS, wrappedKeySchema } from './keyring.ts';

/**
 * A fleet notice: what the hub tells one device about its standing, signed with the tenant's
 * command key (Ed25519; the device holds its public half since it joined). It is retained on the
 * device's notice topic, and also given over HTTP (`POST /fleet/v1/notice`) to a device the broker
 * turns away. Only the hub can make one, so a broker client can neither hand a device a key of its
 * own nor wipe it.
 * - `tenant_keys`: every version of the tenant key, wrapped to this device (after a rotation);
 * - `revoked`: this device was revoked; it erases its templates and keys. It names the device's
 *   public key, so it cannot wipe a device that joined later under the same name.
 */
const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);
const common = {
  v: z.literal(1),
  tenant_id: z.uuid(),
  device_id: id,
  issued_at: z.iso.datetime({ offset: false }),
  sig: signatureSchema,
};

export const fleetNoticeSchema = z.discriminatedUnion('kind', [
  z.strictObject({ ...common, kind: z.literal('tenant_keys'), keys: z.array(wrappedKeySchema).min(1).max(MAX_KEY_VERSIONS) }),
  z.strictObject({ ...common, kind: z.literal('revoked'), public_key: z.string().regex(/^[A-Za-z0-9+/]{43}=$/), revoked_at: z.iso.datetime({ offset: true }) }),
]);

export type FleetNotice = z.output<typeof fleetNoticeSchema>;
type Unsigned<T> = T extends unknown ? Omit<T, 'v' | 'issued_at' | 'sig'> : never;

function signedBytes(notice: object): Buffer {
  return Buffer.from(`authface-fleet-notice\n${canonicalJson(notice)}`);
}

export function signNotice(privateKey: crypto.KeyObject, fields: Unsigned<FleetNotice>): FleetNotice {
  const unsigned = { v: 1 as const, ...fields, issued_at: new Date().toISOString() };
  return { ...unsigned, sig: crypto.sign(null, signedBytes(unsigned), privateKey).toString('base64url') } as FleetNotice;
}

export function isSignedNotice(publicKey: crypto.KeyObject, notice: FleetNotice): boolean {
  const { sig, ...unsigned } = notice;
  return crypto.verify(null, signedBytes(unsigned), publicKey, Buffer.from(sig, 'base64url'));
}

/**
 * A device asking the hub for its notice over HTTP (`POST /fleet/v1/notice`), signed with its own
 * signing key (sync/signature.ts, purpose `notice-request`) at a time within NOTICE_REQUEST_SKEW_MS
 * of the hub's. A device of an earlier release registered no signing key and sends no `at` or `sig`.
 */
export const noticeRequestSchema = z.strictObject({
  tenant_id: z.uuid(),
  device_id: id,
  at: z.iso.datetime({ offset: false }).optional().describe("When the device asked (UTC): a request more than 15 minutes from the hub's clock is refused"),
  sig: signatureSchema.optional(),
});

export type NoticeRequest = z.output<typeof noticeRequestSchema>;

export const NOTICE_REQUEST_SKEW_MS = 15 * 60_000;
