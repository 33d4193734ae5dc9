import crypto from 'node:crypto';
import { z } from 'zod';
import { canonicalJson } from './envelope.ts';

/**
 * Who said a sync message. Every message of the signed protocol names its sender (`from`: `hub`,
 * or the device's id) and carries that sender's Ed25519 signature (`sig`) over its purpose, its
 * tenant and its canonical JSON. The hub signs with the tenant's command key, which a device
 * learned when it joined (remote_commands.public_key); a device signs with the signing key it
 * registered at join (sync/device-key.ts). The tenant key, which every door of the tenant holds,
 * still seals templates, but no longer proves who spoke: a door can speak neither as another door
 * nor as the hub.
 */
export const HUB_SENDER = 'hub';

export type SignedPurpose = 'log' | 'head' | 'reply' | 'repair' | 'submission' | 'events' | 'state' | 'fetch' | 'snapshot' | 'command-result' | 'notice-request' | 'signing-key';

export const senderSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/).describe('Who sent the message: `hub`, or the device id (the sender whose key must verify `sig`)');
export const signatureSchema = z.string().regex(/^[A-Za-z0-9_-]{86}$/, { error: 'sig: an Ed25519 signature, base64url' }).describe("Ed25519 signature of `from`'s key over the purpose, the tenant and the message without `sig` (sync/signature.ts)");

/** An Ed25519 public key as the protocol carries it: its 32 raw bytes in base64 (44 characters). */
export const ed25519PublicKeySchema = z.string().regex(/^[A-Za-z0-9+/]{43}=$/, { error: 'an Ed25519 public key in base64 (44 characters)' });

function signedBytes(purpose: SignedPurpose, tenantId: string, message: object, exclude: readonly string[]): Buffer {
  const covered = Object.fromEntries(Object.entries(message).filter(([k]) => k !== 'sig' && !exclude.includes(k)));
  return Buffer.from(`authface-sync:${purpose}:v2\n${tenantId}\n${canonicalJson(covered)}`);
}

/** `message` with its signature (every field is covered but `sig` itself and `exclude`). */
export function signMessage<T extends object>(key: crypto.KeyObject, purpose: SignedPurpose, tenantId: string, message: T, exclude: readonly string[] = []): T & { sig: string } {
  return { ...message, sig: crypto.sign(null, signedBytes(purpose, tenantId, message, exclude), key).toString('base64url') };
}

/** Whether `message` carries a valid signature of `key` for this purpose and tenant. */
export function isSignedBy(key: crypto.KeyObject, purpose: SignedPurpose, tenantId: string, message: { sig?: string }, exclude: readonly string[] = []): boolean {
  if (typeof message.sig !== 'string') return false;
  try {
    return crypto.verify(null, signedBytes(purpose, tenantId, message, exclude), key, Buffer.from(message.sig, 'base64url'));
  } catch {
    return false;
  }
}
