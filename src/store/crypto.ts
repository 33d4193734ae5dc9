import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** Seals embeddings with AES-256-GCM; the associated data binds a ciphertext to its row. */
export class EmbeddingCipher {
  readonly #key: Buffer;

  constructor(key: Buffer) {
    if (key.length !== 32) throw new Error('the master key must be 32 bytes');
    this.#key = key;
  }

  seal(embedding: Float32Array, associatedData: string): { nonce: Buffer; ciphertext: Buffer } {
    const nonce = crypto.randomBytes(12);
    const cipher = crypto.createCipheriv('aes-256-gcm', this.#key, nonce);
    cipher.setAAD(Buffer.from(associatedData));
    const plain = Buffer.from(embedding.buffer, embedding.byteOffset, embedding.byteLength);
    const ciphertext = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return { nonce, ciphertext };
  }

  open(nonce: Buffer, ciphertext: Buffer, associatedData: string): Float32Array {
    const decipher = crypto.createDecipheriv('aes-256-gcm', this.#key, nonce);
    decipher.setAAD(Buffer.from(associatedData));
    decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
    const plain = Buffer.concat([decipher.update(ciphertext.subarray(0, ciphertext.length - 16)), decipher.final()]);
    // copy into an aligned buffer: Buffer slices may not be 4-byte aligned
    const out = new Float32Array(plain.length / 4);
    new Uint8Array(out.buffer).set(plain);
    return out;
  }
}

/**
 * The master key: from the environment when given, else from `<dataDir>/master.key`, created
 * with mode 0600 on first start. Losing the key file makes stored embeddings unreadable.
 */
export function loadMasterKey(dataDir: string, fromEnv: string | undefined): Buffer {
  if (fromEnv) return parseKey(fromEnv, 'AUTHFACE_MASTER_KEY');
  const file = path.join(dataDir, 'master.key');
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  try {
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    fs.writeSync(fd, crypto.randomBytes(32).toString('hex') + '\n');
    fs.closeSync(fd);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const mode = fs.statSync(file).mode & 0o777;
  if (mode & 0o077) throw new Error(`${file} is readable by other users (mode ${mode.toString(8)}); chmod 600 it`);
  return parseKey(fs.readFileSync(file, 'utf8').trim(), file);
}

function parseKey(text: string, source: string): Buffer {
  const key = /^[0-9a-fA-F]{64}$/.test(text) ? Buffer.from(text, 'hex') : Buffer.from(text, 'base64');
  if (key.length !== 32) throw new Error(`${source} must hold a 32-byte key as 64 hex or 44 base64 characters`);
  return key;
}
