import crypto from 'node:crypto';
import { publicKeyFromBase64 } from '../access/signed-command.ts';
import { x25519PublicKey } from '../sync/envelope.ts';
import { isSignedBy } from '../sync/signature.ts';
import { CHALLENGE_LIFETIME_MS, type Challenge, type ChallengeRequest, type Registration, challengeKey, registrationProof } from '../sync/signing-registration.ts';
import type { HubStore } from './store.ts';

/** A challenge's `expires_at` may be this far past the hub's clock plus its lifetime (several hubs' clocks). */
const CLOCK_SKEW_MS = 60_000;

/**
 * `POST /fleet/v1/signing-key/challenge` (sync/signing-registration.ts): an X25519 public key the
 * hub can make again from the request, valid CHALLENGE_LIFETIME_MS. A name that is not a device of
 * an earlier release waiting to register gets a challenge made from a random secret, which no
 * proof can meet: the answer looks the same.
 */
export async function signingKeyChallenge(store: HubStore, request: ChallengeRequest): Promise<Challenge> {
  const expires_at = new Date(Date.now() + CHALLENGE_LIFETIME_MS).toISOString();
  const device = await registrant(store, request);
  const secret = device ? await challengeSecret(store, request.tenant_id) : crypto.randomBytes(32);
  return { challenge: challengeKey(secret, { ...request, expires_at }).publicKey, expires_at };
}

/**
 * `POST /fleet/v1/signing-key`: records the device's signing key if the request proves the device's
 * key pair and is signed by the new key; true also when that key is already the device's. False for
 * everything else alike (unknown, revoked, another key registered, an expired or made-up challenge,
 * a wrong proof or signature).
 */
export async function registerSigningKey(store: HubStore, r: Registration): Promise<boolean> {
  const expires = Date.parse(r.expires_at);
  if (!(expires > Date.now() && expires <= Date.now() + CHALLENGE_LIFETIME_MS + CLOCK_SKEW_MS)) return false;
  const device = await registrant(store, r);
  if (!device) return false;
  const { privateKey, publicKey } = challengeKey(await challengeSecret(store, r.tenant_id), r);
  if (publicKey !== r.challenge) return false;
  const expected = Buffer.from(registrationProof(crypto.diffieHellman({ privateKey, publicKey: x25519PublicKey(device.publicKey) }), device.publicKey, r));
  const given = Buffer.from(r.proof);
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return false;
  if (!isSignedBy(publicKeyFromBase64(r.signing_key), 'signing-key', r.tenant_id, r)) return false;
  return device.signingKey === r.signing_key || (await store.devices.registerSigningKey(r.tenant_id, r.device_id, r.signing_key));
}

/** The device, if it may register this key: joined, not revoked, and holding no other signing key. */
async function registrant(store: HubStore, r: ChallengeRequest): Promise<{ publicKey: string; signingKey: string | null } | undefined> {
  const device = await store.devices.keysOf(r.tenant_id, r.device_id);
  if (!device || device.revoked || (device.signingKey !== null && device.signingKey !== r.signing_key)) return undefined;
  return device;
}

/** The hub's secret for a tenant's challenges, from its command key (every hub process of the tenant holds it). */
async function challengeSecret(store: HubStore, tenantId: string): Promise<Buffer> {
  const { privateKey } = await store.keys.commandKey(tenantId);
  return crypto.createHmac('sha256', privateKey.export({ type: 'pkcs8', format: 'der' })).update('authface:signing-key-challenge-secret:v1').digest();
}
