import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { OperatorError } from '../errors.ts';

/** A store problem an operator must act on; the message says what is wrong and what to do. */
export class StoreError extends OperatorError {}

/** Seals embeddings with AES-256-GCM; the associated data binds a ciphertext to what it belongs to. */
export class EmbeddingCipher {
  readonly #key: Buffer;
  readonly #pseudonymKey: Buffer;
  readonly #pinTagKey: Buffer;

  constructor(key: Buffer) {
    if (key.length !== 32) throw new Error('the master key must be 32 bytes');
    this.#key = key;
    this.#pseudonymKey = Buffer.from(crypto.hkdfSync('sha256', key, Buffer.alloc(0), 'authface pseudonym v1', 32));
    this.#pinTagKey = Buffer.from(crypto.hkdfSync('sha256', key, Buffer.alloc(0), 'authface pin tag v1', 32));
  }

  seal(embedding: Float32Array, associatedData: string): { nonce: Buffer; ciphertext: Buffer } {
    return this.sealBytes(Buffer.from(embedding.buffer, embedding.byteOffset, embedding.byteLength), associatedData);
  }

  open(nonce: Buffer, ciphertext: Buffer, associatedData: string): Float32Array {
    const plain = this.openBytes(nonce, ciphertext, associatedData);
    // copy into an aligned buffer: Buffer slices may not be 4-byte aligned
    const out = new Float32Array(plain.length / 4);
    new Uint8Array(out.buffer).set(plain);
    return out;
  }

  sealBytes(plain: Buffer, associatedData: string): { nonce: Buffer; ciphertext: Buffer } {
    const nonce = crypto.randomBytes(12);
    const cipher = crypto.createCipheriv('aes-256-gcm', this.#key, nonce);
    cipher.setAAD(Buffer.from(associatedData));
    const ciphertext = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return { nonce, ciphertext };
  }

  openBytes(nonce: Buffer, ciphertext: Buffer, associatedData: string): Buffer {
    const decipher = crypto.createDecipheriv('aes-256-gcm', this.#key, nonce);
    decipher.setAAD(Buffer.from(associatedData));
    decipher.setAuthTag(ciphertext.subarray(ciphertext.length - 16));
    return Buffer.concat([decipher.update(ciphertext.subarray(0, ciphertext.length - 16)), decipher.final()]);
  }

  /**
   * A keyed, stable pseudonym of an identifier: the same person gets the same pseudonym (so the
   * audit trail stays linkable and a re-enrolment continues the version), but without the master
   * key nobody can tell whose it is or test a guess.
   */
  pseudonym(...parts: string[]): string {
    const mac = crypto.createHmac('sha256', this.#pseudonymKey).update(JSON.stringify(parts)).digest('base64url');
    return `erased:${mac.slice(0, 22)}`;
  }

  /** 16 bits of a keyed hash of a tenant's PIN: narrows the lookup of its holders (store/pins.ts). */
  pinTag(tenantId: string, pin: string): number {
    return crypto.createHmac('sha256', this.#pinTagKey).update(JSON.stringify([tenantId, pin])).digest().readUInt16BE(0);
  }
}

/** The key check stored in the database: it opens only with the key the data was sealed with. */
const KEY_CHECK_AAD = 'authface:key-check:v1';

export function sealKeyCheck(cipher: EmbeddingCipher): Buffer {
  const { nonce, ciphertext } = cipher.sealBytes(Buffer.alloc(32), KEY_CHECK_AAD);
  return Buffer.concat([nonce, ciphertext]);
}

export function opensKeyCheck(cipher: EmbeddingCipher, check: Buffer): boolean {
  try {
    cipher.openBytes(check.subarray(0, 12), check.subarray(12), KEY_CHECK_AAD);
    return true;
  } catch {
    return false;
  }
}

export const MASTER_KEY_FILE = 'master.key';

/**
 * The master key: from the environment when given, else from `<dataDir>/master.key`. A new key
 * file (mode 0600) is created only when no template is sealed under an old one
 * (`existing.sealedTemplates`): a missing key next to encrypted templates must be restored, never
 * silently replaced.
 */
export function loadMasterKey(dataDir: string, fromEnv: string | undefined, existing: { sealedTemplates: number } = { sealedTemplates: 0 }): Buffer {
  if (fromEnv) return parseMasterKey(fromEnv, 'AUTHFACE_MASTER_KEY');
  const file = path.join(dataDir, MASTER_KEY_FILE);
  if (!fs.existsSync(file)) {
    if (existing.sealedTemplates > 0) {
      throw new StoreError(
        `${file} is missing, but the database holds ${existing.sealedTemplates} encrypted template(s) sealed with it. ` +
          `A new key cannot read them: restore master.key from your backup (mode 600) or set AUTHFACE_MASTER_KEY to it.`,
      );
    }
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    try {
      const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
      fs.writeSync(fd, crypto.randomBytes(32).toString('hex') + '\n');
      fs.fsyncSync(fd);
      fs.closeSync(fd);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  const mode = fs.statSync(file).mode & 0o777;
  if (mode & 0o077) throw new StoreError(`${file} is readable by other users (mode ${mode.toString(8)}): chmod 600 it`);
  return parseMasterKey(fs.readFileSync(file, 'utf8').trim(), file);
}

/** A 32-byte key written as 64 hex or 44 base64 characters. */
export function parseMasterKey(text: string, source: string): Buffer {
  const key = /^[0-9a-fA-F]{64}$/.test(text) ? Buffer.from(text, 'hex') : /^[A-Za-z0-9+/]{43}=$/.test(text) ? Buffer.from(text, 'base64') : null;
  if (!key || key.length !== 32) throw new StoreError(`${source} must hold a 32-byte key written as 64 hex or 44 base64 characters`);
  return key;
}

/** What a template belongs to; its ciphertext opens only for exactly this (tamper evidence). */
export interface TemplateBinding {
  tenantId: string;
  externalUserId: string;
  version: number;
  model: string;
  /** A further capture's slot (1, 2…); the enrolment template has none. */
  capture?: number;
}

export function templateAad(b: TemplateBinding): string {
  // JSON: no separator inside an id can make two different bindings read the same; a capture is
  // bound to its slot, so no row can stand in for the enrolment template or for another capture
  const slot = b.capture ? [b.capture] : [];
  return JSON.stringify(['authface:template:v2', b.tenantId, b.externalUserId, b.version, b.model, ...slot]);
}

/** Before schema LEGACY_SEAL_SCHEMA + 1 a template was bound to its row only (kept to re-seal them once). */
export function legacyTemplateAad(userId: string, version: number): string {
  return `template:${userId}:${version}`;
}
