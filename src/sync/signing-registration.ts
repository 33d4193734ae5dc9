import crypto from 'node:crypto';
import { z } from 'zod';
import { rawPublicKey, x25519PublicKey } from './envelope.ts';
import { ed25519PublicKeySchema, signatureSchema } from './signature.ts';

/**
 * A door that joined with an earlier release registered no signing key: the hub heard it on the
 * tenant key alone, which every door of the tenant holds. Upgraded, it registers the signing key it
 * now signs with itself, over HTTP, proving that it holds the device key pair (X25519) it registered
 * when it joined — the key only it has:
 *
 * 1. `POST /fleet/v1/signing-key/challenge` `{tenant_id, device_id, signing_key}`: the hub answers
 *    with an X25519 public key of its own for this registration (`challenge`: made from a secret of
 *    the hub, the request and `expires_at`, so the hub keeps nothing), valid 5 minutes. Any name
 *    gets one: the endpoint does not tell which devices exist.
 * 2. `POST /fleet/v1/signing-key` with the challenge, a `proof` (an HMAC under the X25519 secret the
 *    challenge and the device's key pair share, over what is registered) and `sig`, by the new
 *    signing key over the request (so nobody registers a key they do not hold). The hub records the
 *    key only for a joined, unrevoked device that has none; one that already has this key is told
 *    so alike. Everything else is refused alike.
 *
 * From then on the hub hears the door only signed by that key.
 */
export const CHALLENGE_LIFETIME_MS = 5 * 60_000;
const PROOF_INFO = 'authface:signing-key-registration:v1';

const deviceId = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);
const x25519Key = z.string().regex(/^[A-Za-z0-9+/]{43}=$/, { error: 'an X25519 public key in base64 (44 characters)' });

export const challengeRequestSchema = z.strictObject({
  tenant_id: z.uuid(),
  device_id: deviceId,
  signing_key: ed25519PublicKeySchema.describe('The Ed25519 public key the device signs with (sync/device-signing.key)'),
});

export const challengeSchema = z.strictObject({
  challenge: x25519Key.describe("The hub's X25519 public key for this registration"),
  expires_at: z.iso.datetime({ offset: false }),
});

export const registrationSchema = challengeRequestSchema.extend({
  ...challengeSchema.shape,
  proof: z.string().regex(/^[A-Za-z0-9_-]{43}$/, { error: 'proof: an HMAC-SHA256, base64url' }).describe("HMAC-SHA256 under the secret the challenge and the device's key pair share"),
  sig: signatureSchema,
});

export type ChallengeRequest = z.output<typeof challengeRequestSchema>;
export type Challenge = z.output<typeof challengeSchema>;
export type Registration = z.output<typeof registrationSchema>;

/** The proof over what is registered, from the X25519 secret of the challenge and the device's key pair. */
export function registrationProof(shared: Buffer, devicePublicKey: string, r: ChallengeRequest & Challenge): string {
  const key = Buffer.from(crypto.hkdfSync('sha256', shared, Buffer.from(`${r.challenge}|${devicePublicKey}`), PROOF_INFO, 32));
  return crypto.createHmac('sha256', key).update(`${r.tenant_id}\n${r.device_id}\n${r.signing_key}\n${r.challenge}\n${r.expires_at}`).digest('base64url');
}

/** The device's side: the proof, with its X25519 private key. */
export function proveRegistration(devicePrivateKeyPem: string, r: ChallengeRequest & Challenge): string {
  const privateKey = crypto.createPrivateKey(devicePrivateKeyPem);
  const shared = crypto.diffieHellman({ privateKey, publicKey: x25519PublicKey(r.challenge) });
  return registrationProof(shared, rawPublicKey(crypto.createPublicKey(privateKey)).toString('base64'), r);
}

// an X25519 private key from 32 bytes: the PKCS#8 DER prefix is fixed
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

/** The hub's side: its X25519 key pair for one challenge, made again from its secret and the request (it keeps nothing). */
export function challengeKey(secret: Buffer, r: ChallengeRequest & { expires_at: string }): { privateKey: crypto.KeyObject; publicKey: string } {
  const seed = crypto.createHmac('sha256', secret).update(`${PROOF_INFO}\n${r.tenant_id}\n${r.device_id}\n${r.signing_key}\n${r.expires_at}`).digest();
  const privateKey = crypto.createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
  return { privateKey, publicKey: rawPublicKey(crypto.createPublicKey(privateKey)).toString('base64') };
}
