import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { OperatorError } from '../errors.ts';
import { loadDeviceKey } from './device-key.ts';
import { type TenantKey, unwrapTenantKey } from './envelope.ts';

const base64 = z.string().max(200).regex(/^[A-Za-z0-9+/]*={0,2}$/);

/** One version of the tenant key wrapped to one device, and the first change of the log it authenticates. */
export const wrappedKeySchema = z.strictObject({
  tenantId: z.uuid(),
  deviceId: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  keyVersion: z.int().min(1),
  sinceSeq: z.int().min(1).default(1).describe('The first change of the log this version authenticates (a rotation starts a version)'),
  ephemeralPublicKey: base64,
  nonce: base64,
  ciphertext: base64,
});

export type WrappedKey = z.output<typeof wrappedKeySchema>;

/** At most this many versions of a tenant key (each revocation makes one). */
export const MAX_KEY_VERSIONS = 1000;

/** The tenant key file: every version wrapped to this device (a file of one version, as `authface hub wrap-key` makes, is read too). */
const keyFileSchema = z.union([z.strictObject({ keys: z.array(wrappedKeySchema).min(1).max(MAX_KEY_VERSIONS) }), wrappedKeySchema.transform((k) => ({ keys: [k] }))]);

interface KeyVersion extends TenantKey {
  sinceSeq: number;
}

/**
 * A device's versions of its tenant key. The newest seals what the device sends and authenticates
 * it; an older one still opens the templates and changes made while it was current. A change of
 * the log must be authenticated under the version current at its sequence number, or a newer one:
 * a device revoked by a rotation holds only older versions, so it cannot forge a later change.
 */
export class TenantKeyring {
  readonly #versions = new Map<number, KeyVersion>();

  constructor(
    readonly tenantId: string,
    versions: readonly KeyVersion[],
  ) {
    if (versions.length === 0) throw new OperatorError(`no key of tenant ${tenantId}`);
    for (const v of versions) this.#versions.set(v.keyVersion, v);
  }

  /** A keyring of one version (a device set up by hand with `authface hub wrap-key`, and tests). */
  static of(tenantId: string, key: Buffer, keyVersion = 1): TenantKeyring {
    return new TenantKeyring(tenantId, [{ key, keyVersion, sinceSeq: 1 }]);
  }

  /** The newest version: what this device seals and authenticates with. */
  get latest(): TenantKey {
    const newest = Math.max(...this.#versions.keys());
    return this.#versions.get(newest) as KeyVersion;
  }

  key(keyVersion: number): Buffer | undefined {
    return this.#versions.get(keyVersion)?.key;
  }

  /** The lowest version that may authenticate the change at `seq`. */
  requiredFor(seq: number): number {
    let required = 0;
    for (const v of this.#versions.values()) if (v.sinceSeq <= seq && v.keyVersion > required) required = v.keyVersion;
    return required;
  }

  /** The key that may authenticate the change at `seq` under `keyVersion`, if that is allowed and held. */
  changeKey(seq: number, keyVersion: number): Buffer | undefined {
    return keyVersion >= this.requiredFor(seq) ? this.key(keyVersion) : undefined;
  }

  has(keyVersion: number): boolean {
    return this.#versions.has(keyVersion);
  }

  /** Versions held, oldest first. */
  versions(): number[] {
    return [...this.#versions.keys()].sort((a, b) => a - b);
  }

  /** Adds the versions not held yet; returns how many were new. */
  add(versions: readonly KeyVersion[]): number {
    let added = 0;
    for (const v of versions) {
      if (this.#versions.has(v.keyVersion)) continue;
      this.#versions.set(v.keyVersion, v);
      added++;
    }
    return added;
  }
}

/** Opens wrapped versions with this device's private key (each must be wrapped for this tenant and device). */
export function unwrapKeys(wrapped: readonly WrappedKey[], privateKeyPem: string, expect: { tenantId: string; deviceId: string }): KeyVersion[] {
  return wrapped.map((w) => ({ key: unwrapTenantKey(w, privateKeyPem, expect), keyVersion: w.keyVersion, sinceSeq: w.sinceSeq }));
}

/** The tenant key file (`sync.tenant_key_file`): its wrapped versions, as written. */
export function readKeyFile(file: string): WrappedKey[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new OperatorError(`sync.tenant_key_file ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): join the hub again (authface join), or make it with \`authface hub wrap-key\``);
  }
  let parsed: z.output<typeof keyFileSchema>;
  try {
    parsed = keyFileSchema.parse(JSON.parse(text));
  } catch {
    throw new OperatorError(`sync.tenant_key_file ${file} is not a tenant key file (authface join writes one)`);
  }
  return parsed.keys;
}

/** Writes the tenant key file whole or not at all, readable by this user only. */
export function writeKeyFile(file: string, wrapped: readonly WrappedKey[]): void {
  writePrivateFile(file, `${JSON.stringify({ keys: wrapped }, null, 2)}\n`);
}

/** The device's keyring from its tenant key file, opened with its key pair. */
export function loadKeyring(file: string, dataDir: string, expect: { tenantId: string; deviceId: string }): TenantKeyring {
  return new TenantKeyring(expect.tenantId, unwrapKeys(readKeyFile(file), loadDeviceKey(dataDir).privateKeyPem, expect));
}

/** A file written whole or not at all (a temporary file renamed), readable by this user only. */
export function writePrivateFile(file: string, content: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, content, { mode: 0o600 });
  fs.renameSync(tmp, file);
}
