import crypto from 'node:crypto';
import { OperatorError } from '../errors.ts';

/**
 * Templates travel between devices and the hub sealed end to end: AES-256-GCM under a per-tenant
 * key, whatever carries them (MQTT, TLS or not, the hub's database). The authenticated data binds
 * the tenant, the user, the template's version, the model that made it and the tenant key's
 * version, so an envelope cannot be replayed as someone else's, as another version, or into another
 * tenant. Each device holds the tenant key wrapped to its own X25519 key pair: the hub never sends
 * the key in the clear, and a device can open only what was wrapped for it.
 */

export class EnvelopeError extends OperatorError {
  constructor(
    readonly code: 'tampered' | 'wrong_model' | 'wrong_key' | 'malformed',
    message: string,
  ) {
    super(message);
  }
}

/** A version of a tenant's key. */
export interface TenantKey {
  key: Buffer;
  keyVersion: number;
}

export interface TemplateBinding {
  tenantId: string;
  externalUserId: string;
  version: number;
  model: string;
  keyVersion: number;
}

/** A sealed template as it appears on the wire and at the hub (base64 fields). */
export interface SealedTemplate {
  nonce: string;
  ciphertext: string;
}

const TEMPLATE_AAD = 'authface:sync-template:v1';
const WRAP_AAD = 'authface:tenant-key-wrap:v1';
const WRAP_INFO = 'authface tenant key wrap v1';

export function newTenantKey(): Buffer {
  return crypto.randomBytes(32);
}

function templateAad(b: TemplateBinding): Buffer {
  return Buffer.from(JSON.stringify([TEMPLATE_AAD, b.tenantId, b.externalUserId, b.version, b.model, b.keyVersion]));
}

export function sealTemplate(tenantKey: Buffer, embedding: Float32Array, binding: TemplateBinding): SealedTemplate {
  const nonce = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', tenantKey, nonce);
  cipher.setAAD(templateAad(binding));
  const plain = Buffer.from(embedding.buffer, embedding.byteOffset, embedding.byteLength);
  const ciphertext = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
  return { nonce: nonce.toString('base64'), ciphertext: ciphertext.toString('base64') };
}

/**
 * Opens a template for `binding`; refuses one made by a model this device does not run before
 * trying (its embedding would be compared with incomparable ones), and any envelope whose bytes or
 * binding were changed, or that was sealed under another key.
 */
export function openTemplate(tenantKey: Buffer, sealed: SealedTemplate, binding: TemplateBinding, runningModel: string): Float32Array {
  if (binding.model !== runningModel) {
    throw new EnvelopeError('wrong_model', `template of ${binding.tenantId}/${binding.externalUserId} v${binding.version} was made by model ${binding.model}; this device runs ${runningModel}`);
  }
  const nonce = Buffer.from(sealed.nonce, 'base64');
  const ciphertext = Buffer.from(sealed.ciphertext, 'base64');
  if (nonce.length !== 12 || ciphertext.length < 16) throw new EnvelopeError('malformed', 'a template envelope has a bad nonce or ciphertext');
  try {
    const decipher = crypto.createDecipheriv('aes-256-gcm', tenantKey, nonce);
    decipher.setAAD(templateAad(binding));
    decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
    const plain = Buffer.concat([decipher.update(ciphertext.subarray(0, ciphertext.length - 16)), decipher.final()]);
    const out = new Float32Array(plain.length / 4);
    new Uint8Array(out.buffer).set(plain);
    return out;
  } catch {
    throw new EnvelopeError('tampered', `template envelope of ${binding.tenantId}/${binding.externalUserId} v${binding.version} does not open: altered, or sealed under another tenant's key`);
  }
}

/**
 * The same template sealed for another binding: a version the hub gave an enrolment, or the tenant
 * key's current version. Throws as openTemplate does when it does not open.
 */
export function resealTemplate(sealed: SealedTemplate, from: { key: Buffer; binding: TemplateBinding }, to: { key: Buffer; binding: TemplateBinding }): SealedTemplate {
  return sealTemplate(to.key, openTemplate(from.key, sealed, from.binding, from.binding.model), to.binding);
}

export interface DeviceKeyPair {
  /** Raw X25519 public key, base64 (44 characters): what the hub registers. */
  publicKey: string;
  /** PKCS#8 PEM: stays on the device (data directory, mode 0600). */
  privateKeyPem: string;
}

export function generateDeviceKeyPair(): DeviceKeyPair {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('x25519');
  return { publicKey: rawPublicKey(publicKey).toString('base64'), privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/** The tenant key as wrapped for one device: an ephemeral X25519 key, and the key sealed under the shared secret. */
export interface WrappedTenantKey {
  tenantId: string;
  deviceId: string;
  keyVersion: number;
  ephemeralPublicKey: string;
  nonce: string;
  ciphertext: string;
}

export function wrapTenantKey(tenantKey: Buffer, devicePublicKey: string, to: { tenantId: string; deviceId: string; keyVersion: number }): WrappedTenantKey {
  const ephemeral = crypto.generateKeyPairSync('x25519');
  const ephemeralPublicKey = rawPublicKey(ephemeral.publicKey).toString('base64');
  const key = wrappingKey(crypto.diffieHellman({ privateKey: ephemeral.privateKey, publicKey: x25519PublicKey(devicePublicKey) }), ephemeralPublicKey, devicePublicKey);
  const nonce = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(wrapAad(to));
  const ciphertext = Buffer.concat([cipher.update(tenantKey), cipher.final(), cipher.getAuthTag()]);
  return { ...to, ephemeralPublicKey, nonce: nonce.toString('base64'), ciphertext: ciphertext.toString('base64') };
}

export function unwrapTenantKey(wrapped: WrappedTenantKey, devicePrivateKeyPem: string, expect: { tenantId: string; deviceId: string }): Buffer {
  if (wrapped.tenantId !== expect.tenantId || wrapped.deviceId !== expect.deviceId) {
    throw new EnvelopeError('wrong_key', `a tenant key wrapped for ${wrapped.tenantId}/${wrapped.deviceId} was offered to ${expect.tenantId}/${expect.deviceId}`);
  }
  const privateKey = crypto.createPrivateKey(devicePrivateKeyPem);
  const devicePublicKey = rawPublicKey(crypto.createPublicKey(privateKey)).toString('base64');
  try {
    const key = wrappingKey(crypto.diffieHellman({ privateKey, publicKey: x25519PublicKey(wrapped.ephemeralPublicKey) }), wrapped.ephemeralPublicKey, devicePublicKey);
    const ciphertext = Buffer.from(wrapped.ciphertext, 'base64');
    const decipher = crypto.createDecipheriv('aes-256-gcm', key, Buffer.from(wrapped.nonce, 'base64'));
    decipher.setAAD(wrapAad(wrapped));
    decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
    return Buffer.concat([decipher.update(ciphertext.subarray(0, ciphertext.length - 16)), decipher.final()]);
  } catch {
    throw new EnvelopeError('wrong_key', `the tenant key wrapped for ${wrapped.deviceId} does not open with this device's key`);
  }
}

function wrapAad(to: { tenantId: string; deviceId: string; keyVersion: number }): Buffer {
  return Buffer.from(JSON.stringify([WRAP_AAD, to.tenantId, to.deviceId, to.keyVersion]));
}

/** HKDF over the X25519 secret, salted with both public keys (so the key is bound to this exchange). */
function wrappingKey(shared: Buffer, ephemeralPublicKey: string, devicePublicKey: string): Buffer {
  return Buffer.from(crypto.hkdfSync('sha256', shared, Buffer.from(`${ephemeralPublicKey}|${devicePublicKey}`), WRAP_INFO, 32));
}

// X25519 public keys as raw 32 bytes: the SPKI DER prefix is fixed
const X25519_SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

export function rawPublicKey(key: crypto.KeyObject): Buffer {
  return key.export({ type: 'spki', format: 'der' }).subarray(X25519_SPKI_PREFIX.length);
}

export function x25519PublicKey(base64: string): crypto.KeyObject {
  const raw = Buffer.from(base64, 'base64');
  if (raw.length !== 32) throw new EnvelopeError('malformed', 'an X25519 public key is 32 bytes');
  return crypto.createPublicKey({ key: Buffer.concat([X25519_SPKI_PREFIX, raw]), format: 'der', type: 'spki' });
}

/**
 * Every other message of the fleet protocol is authenticated with a key derived from the tenant
 * key: a change of the log and a snapshot chunk by the hub, a submission, door events and a
 * device state by a device, an acknowledgement by the hub. A broker client without the tenant key
 * can read them (nothing in them is a face) but can neither make nor alter one: it cannot delete a
 * person, put one in a group, move a tenant's origins, or acknowledge a door's change for the hub.
 */
export interface MessageAuth {
  /** The version of the tenant key the MAC was made with. */
  key_version: number;
  /** HMAC-SHA256, base64, over the purpose, the tenant and the message's canonical JSON. */
  mac: string;
}

export type MessagePurpose = 'change' | 'snapshot' | 'reply' | 'submission' | 'events' | 'state';

const MESSAGE_KEY_INFO = 'authface:sync-message-mac:v1';

/** The MAC key of a tenant key version (HKDF: the tenant key itself never keys a MAC). */
export function messageKey(tenantKey: Buffer): Buffer {
  return Buffer.from(crypto.hkdfSync('sha256', tenantKey, Buffer.alloc(0), MESSAGE_KEY_INFO, 32));
}

/** JSON with object keys sorted at every level and undefined members left out: the same bytes on both sides. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v === undefined ? null : v)).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function mac(key: Buffer, purpose: MessagePurpose, tenantId: string, message: object): Buffer {
  return crypto.createHmac('sha256', key).update(`authface:${purpose}:v1\n${tenantId}\n${canonicalJson(message)}`).digest();
}

/**
 * Fields a MAC never covers: its own, and the signed protocol's sender and signature, which are
 * added after it (sync/signature.ts; the signature covers the MAC).
 */
const OUTSIDE_MAC = ['auth', 'from', 'sig'];

/** `message` with its `auth` (the fields the MAC covers are all of them but OUTSIDE_MAC and `exclude`). */
export function authenticate<T extends object>(key: TenantKey, purpose: MessagePurpose, tenantId: string, message: T, exclude: readonly string[] = []): T & { auth: MessageAuth } {
  const covered = omit(message, [...OUTSIDE_MAC, ...exclude]);
  return { ...message, auth: { key_version: key.keyVersion, mac: mac(messageKey(key.key), purpose, tenantId, covered).toString('base64') } };
}

/**
 * Whether a message carries a valid MAC of the tenant key version it names (`tenantKey` returns
 * the key of a version, or undefined for one this side does not hold).
 */
export function isAuthentic(
  tenantKey: (keyVersion: number) => Buffer | undefined,
  purpose: MessagePurpose,
  tenantId: string,
  message: { auth?: MessageAuth },
  exclude: readonly string[] = [],
): boolean {
  const auth = message.auth;
  const key = auth && tenantKey(auth.key_version);
  if (!auth || !key) return false;
  const given = Buffer.from(auth.mac, 'base64');
  const expected = mac(messageKey(key), purpose, tenantId, omit(message, [...OUTSIDE_MAC, ...exclude]));
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

function omit(message: object, keys: readonly string[]): Record<string, unknown> {
  return Object.fromEntries(Object.entries(message).filter(([k]) => !keys.includes(k)));
}
