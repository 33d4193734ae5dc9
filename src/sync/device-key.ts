import fs from 'node:fs';
import path from 'node:path';
import { type DeviceKeyPair, generateDeviceKeyPair } from './envelope.ts';
import crypto from 'node:crypto';

export const DEVICE_KEY_FILE = 'device.key';

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
