import fs from 'node:fs';
import path from 'node:path';
import { type DeviceKeyPair, generateDeviceKeyPair } from './envelope.ts';
import crypto from 'node:crypto';

export const DEVICE_KEY_FILE = 'device.key';
export const SIGNING_KEY_FILE = 'device-signing.key';

/**
 * This device's X25519 key pair, in `<dataDir>/device.key` (0600, made on first use). Its public
 * half is what the hub wraps the tenant key to (`authface sync key` prints it); the private half
 * never leaves the device.
 */
export function loadDeviceKey(dataDir: string): DeviceKeyPair {
  const file = path.join(dataDir, DEVICE_KEY_FILE);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const pair = generateDeviceKeyPair();
    try {
      fs.writeFileSync(file, pair.privateKeyPem, { mode: 0o600, flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  const privateKeyPem = fs.readFileSync(file, 'utf8');
  const spki = crypto.createPublicKey(privateKeyPem).export({ type: 'spki', format: 'der' });
  return { privateKeyPem, publicKey: spki.subarray(spki.length - 32).toString('base64') };
}

/** This device's Ed25519 signing key: every sync message it sends is signed with it (sync/signature.ts). */
export interface DeviceSigningKey {
  privateKey: crypto.KeyObject;
  /** Raw 32 bytes, base64 (44 characters): what the device registers with the hub when it joins. */
  publicKey: string;
}

/**
 * This device's signing key pair, in `<dataDir>/device-signing.key` (0600, made on first use). Its
 * public half is registered with the hub at join (`authface join`, or `authface hub wrap-key
 * --signing-key`); the hub takes a sync message in this device's name only with its signature.
 */
export function loadSigningKey(dataDir: string): DeviceSigningKey {
  const file = path.join(dataDir, SIGNING_KEY_FILE);
  if (!fs.existsSync(file)) {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const { privateKey } = crypto.generateKeyPairSync('ed25519');
    try {
      fs.writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), { mode: 0o600, flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  const privateKey = crypto.createPrivateKey(fs.readFileSync(file, 'utf8'));
  const x = crypto.createPublicKey(privateKey).export({ format: 'jwk' }).x as string;
  return { privateKey, publicKey: Buffer.from(x, 'base64url').toString('base64') };
}
