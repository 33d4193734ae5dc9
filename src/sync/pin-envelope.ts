import crypto from 'node:crypto';
import { type PinVerifier, makePinVerifier } from '../store/pins.ts';
import { EnvelopeError, type SealedTemplate, type TenantKey } from './envelope.ts';

/**
 * A fleet PIN as it travels in the tenant's log and rests at the hub: never the PIN, only its
 * salted scrypt verifier sealed under a version of the tenant key (AES-256-GCM, bound to tenant,
 * person, key version and tag), and a 16-bit tag that lets a door find the few rows to check. The
 * tag is keyed from the same tenant key version, so every door of the tenant (which holds every
 * version) computes it from a typed PIN, and nobody without the key learns anything from it.
 */
export interface FleetPin {
  key_version: number;
  tag: number;
  verifier: SealedTemplate;
}

export interface FleetPinBinding {
  tenantId: string;
  externalUserId: string;
}

const PIN_AAD = 'authface:fleet-pin:v1';
const TAG_INFO = 'authface:fleet-pin-tag:v1';

/** Each key version's tag key, derived once (a door computes a typed PIN's tag under every version it holds). */
const tagKeys = new WeakMap<Buffer, Buffer>();

/** The finding tag of `pin` under one version of the tenant key. */
export function fleetPinTag(tenantKey: Buffer, tenantId: string, pin: string): number {
  let tagKey = tagKeys.get(tenantKey);
  if (!tagKey) {
    tagKey = Buffer.from(crypto.hkdfSync('sha256', tenantKey, Buffer.alloc(0), TAG_INFO, 32));
    tagKeys.set(tenantKey, tagKey);
  }
  return crypto.createHmac('sha256', tagKey).update(JSON.stringify([tenantId, pin])).digest().readUInt16BE(0);
}

function aad(b: FleetPinBinding, keyVersion: number, tag: number): Buffer {
  return Buffer.from(JSON.stringify([PIN_AAD, b.tenantId, b.externalUserId, keyVersion, tag]));
}

/** Makes the verifier of `pin` (scrypt, ~40 ms) and seals it under the tenant key's `key` version. */
export async function sealFleetPin(key: TenantKey, binding: FleetPinBinding, pin: string): Promise<FleetPin> {
  const { salt, hash } = await makePinVerifier(pin);
  const tag = fleetPinTag(key.key, binding.tenantId, pin);
  const nonce = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', key.key, nonce);
  cipher.setAAD(aad(binding, key.keyVersion, tag));
  const ciphertext = Buffer.concat([cipher.update(Buffer.concat([salt, hash])), cipher.final(), cipher.getAuthTag()]);
  return { key_version: key.keyVersion, tag, verifier: { nonce: nonce.toString('base64'), ciphertext: ciphertext.toString('base64') } };
}

/** The verifier of a fleet PIN, opened with the key version it names; throws EnvelopeError when it does not open. */
export function openFleetPin(tenantKey: Buffer, pin: FleetPin, binding: FleetPinBinding): PinVerifier {
  const nonce = Buffer.from(pin.verifier.nonce, 'base64');
  const ciphertext = Buffer.from(pin.verifier.ciphertext, 'base64');
  if (nonce.length !== 12 || ciphertext.length !== 16 + 32 + 16) throw new EnvelopeError('malformed', 'a PIN envelope has a bad nonce or ciphertext');
  try {
    const decipher = crypto.createDecipheriv('aes-256-gcm', tenantKey, nonce);
    decipher.setAAD(aad(binding, pin.key_version, pin.tag));
    decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
    const plain = Buffer.concat([decipher.update(ciphertext.subarray(0, ciphertext.length - 16)), decipher.final()]);
    return { salt: plain.subarray(0, 16), hash: plain.subarray(16) };
  } catch {
    throw new EnvelopeError('tampered', `the PIN envelope of ${binding.tenantId}/${binding.externalUserId} does not open: altered, or sealed under another key`);
  }
}
