import crypto from 'node:crypto';
import fs from 'node:fs';
import { z } from 'zod';
import { OperatorError } from '../errors.ts';

/**
 * The signed remote command: what an admin (or, later, the hub) sends to a device's command
 * topic. An Ed25519 signature covers the command, the device, the door, the issue time and a
 * nonce, so a command cannot be forged, sent to another door or device, or replayed; the device
 * holds only the public key.
 */
export const COMMAND_VERSION = 1;

export const commandName = z.enum(['unlock', 'open_session']);
export type CommandName = z.infer<typeof commandName>;

const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);

export const signedCommandSchema = z.strictObject({
  v: z.literal(COMMAND_VERSION),
  command: commandName,
  device: id,
  door: id,
  issued_at: z.iso.datetime({ offset: false }),
  nonce: z.string().regex(/^[A-Za-z0-9_-]{22,64}$/, { error: 'nonce: 16 to 48 random bytes, base64url' }),
  request_id: z.string().min(1).max(100).optional(),
  biometry_url: z.string().max(2048).optional(),
  sig: z.string().regex(/^[A-Za-z0-9_-]{86}$/, { error: 'sig: an Ed25519 signature, base64url' }),
});

export type SignedCommand = z.infer<typeof signedCommandSchema>;
export type CommandFields = Omit<SignedCommand, 'v' | 'issued_at' | 'nonce' | 'sig'> & { issued_at?: string; nonce?: string };

/** The exact bytes signed: every field in a fixed order, in JSON (no separator can be forged). */
function signedBytes(c: Omit<SignedCommand, 'sig'>): Buffer {
  return Buffer.from(
    `authface-command\n${JSON.stringify([c.v, c.command, c.device, c.door, c.issued_at, c.nonce, c.request_id ?? null, c.biometry_url ?? null])}`,
  );
}

export function signCommand(privateKey: crypto.KeyObject, fields: CommandFields): SignedCommand {
  const unsigned = {
    v: COMMAND_VERSION,
    ...fields,
    issued_at: fields.issued_at ?? new Date().toISOString(),
    nonce: fields.nonce ?? crypto.randomBytes(16).toString('base64url'),
  } as Omit<SignedCommand, 'sig'>;
  return { ...unsigned, sig: crypto.sign(null, signedBytes(unsigned), privateKey).toString('base64url') };
}

export function hasValidSignature(publicKey: crypto.KeyObject, c: SignedCommand): boolean {
  const { sig, ...unsigned } = c;
  return crypto.verify(null, signedBytes(unsigned), publicKey, Buffer.from(sig, 'base64url'));
}

/** An Ed25519 public key as the device file holds it: its 32 raw bytes, base64. */
export function publicKeyFromBase64(text: string): crypto.KeyObject {
  const raw = Buffer.from(text, 'base64');
  if (raw.length !== 32) throw new OperatorError('an Ed25519 public key is 32 bytes, written in base64 (44 characters)');
  return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
}

export function publicKeyToBase64(key: crypto.KeyObject): string {
  return Buffer.from(key.export({ format: 'jwk' }).x as string, 'base64url').toString('base64');
}

/** A new admin key pair: the private key PEM (PKCS#8), the public key as the device file wants it. */
export function generateCommandKeys(): { privatePem: string; publicKey: string } {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
  return { privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string, publicKey: publicKeyToBase64(publicKey) };
}

/** Reads an admin's private key file, refusing one that other users can read. */
export function readPrivateKey(file: string): crypto.KeyObject {
  let text: string;
  try {
    const mode = fs.statSync(file).mode & 0o777;
    if (mode & 0o077) throw new OperatorError(`${file} is readable by other users (mode ${mode.toString(8)}): chmod 600 it`);
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof OperatorError) throw err;
    throw new OperatorError(`cannot read the key file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const key = crypto.createPrivateKey(text);
    if (key.asymmetricKeyType !== 'ed25519') throw new Error('not ed25519');
    return key;
  } catch {
    throw new OperatorError(`${file} is not an Ed25519 private key (make one with \`authface command keygen\`)`);
  }
}
