import crypto from 'node:crypto';
import { promisify } from 'node:util';
import { type Db, now } from './database.ts';

/** PINs are 4 to 8 digits. */
export const PIN_FORMAT = /^\d{4,8}$/;

const scrypt = promisify(crypto.scrypt) as (pin: string, salt: Buffer, keylen: number, options: crypto.ScryptOptions) => Promise<Buffer>;

/** scrypt cost: about 40 ms and 16 MiB per check here, so guessing a stolen row's PIN is slow. */
const SCRYPT = { N: 2 ** 14, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const;
const HASH_BYTES = 32;
const DUMMY_SALT = Buffer.alloc(16);

/** What checks a PIN: its salt and scrypt hash. */
export interface PinVerifier {
  salt: Buffer;
  hash: Buffer;
}

export async function makePinVerifier(pin: string): Promise<PinVerifier> {
  const salt = crypto.randomBytes(16);
  return { salt, hash: await scrypt(pin, salt, HASH_BYTES, SCRYPT) };
}

/** A fleet PIN's tag under one version of the tenant key (sync/pin-envelope.ts). */
export interface FleetPinTag {
  keyVersion: number;
  tag: number;
}

/**
 * PINs of the second factor (`face+pin` doors). A PIN is kept only as a salted scrypt hash. To find
 * who holds a PIN typed at a door without hashing it against every user, each row also carries a
 * 16-bit tag of the PIN, keyed by the master key: the tag picks a few rows, and only those are
 * checked with scrypt. Without the master key the tag says nothing; with it, it still leaves
 * every PIN among thousands of candidates, each costing a scrypt run.
 *
 * A fleet tenant's PINs come from the hub's log instead (`hold`): their tag is keyed by a version of
 * the tenant key (`key_version` set), so every door of the tenant finds them (`findFleetPins`).
 */
export class PinStore {
  readonly #fleetTags = new Map<string, (pin: string) => FleetPinTag[]>();

  constructor(
    private readonly db: Db,
    private readonly tagOf: (tenantId: string, pin: string) => number,
  ) {}

  /** Sets a PIN of this device's own (a standalone device). */
  async set(tenantId: string, externalUserId: string, pin: string): Promise<void> {
    const { salt, hash } = await makePinVerifier(pin);
    this.#write(tenantId, externalUserId, { keyVersion: null, tag: this.tagOf(tenantId, pin) }, { salt, hash });
  }

  /** Holds a fleet PIN as the hub's log gives it (its verifier opened, its tag as the hub made it). */
  hold(tenantId: string, externalUserId: string, tag: FleetPinTag, verifier: PinVerifier): void {
    this.#write(tenantId, externalUserId, tag, verifier);
  }

  /** Finds the tenant's fleet PINs from now on: `tags` gives a typed PIN's tag under each key version held. */
  findFleetPins(tenantId: string, tags: (pin: string) => FleetPinTag[]): void {
    this.#fleetTags.set(tenantId, tags);
  }

  #write(tenantId: string, externalUserId: string, tag: { keyVersion: number | null; tag: number }, v: PinVerifier): void {
    this.db
      .prepare(
        `INSERT INTO user_pins (tenant_id, external_user_id, key_version, tag, salt, hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (tenant_id, external_user_id) DO UPDATE SET key_version = excluded.key_version, tag = excluded.tag, salt = excluded.salt, hash = excluded.hash, created_at = excluded.created_at`,
      )
      .run(tenantId, externalUserId, tag.keyVersion, tag.tag, v.salt, v.hash, now());
  }

  /** Removes the person's PIN (`fleetOnly`: only one the hub's log gave, not one set here before the door joined a fleet). */
  remove(tenantId: string, externalUserId: string, options: { fleetOnly?: boolean } = {}): boolean {
    const only = options.fleetOnly ? ' AND key_version IS NOT NULL' : '';
    return this.db.prepare(`DELETE FROM user_pins WHERE tenant_id = ? AND external_user_id = ?${only}`).run(tenantId, externalUserId).changes === 1;
  }

  has(tenantId: string, externalUserId: string): boolean {
    return this.db.prepare('SELECT 1 FROM user_pins WHERE tenant_id = ? AND external_user_id = ?').get(tenantId, externalUserId) !== undefined;
  }

  count(tenantId: string): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM user_pins WHERE tenant_id = ?').get(tenantId) as { n: number }).n;
  }

  /** The users of the tenant whose PIN this is (usually one, or none). */
  async holders(tenantId: string, pin: string): Promise<string[]> {
    // this device's own tag, and the fleet's under each version of the tenant key held here
    const wanted = new Map<number | null, number>([[null, this.tagOf(tenantId, pin)]]);
    for (const t of this.#fleetTags.get(tenantId)?.(pin) ?? []) wanted.set(t.keyVersion, t.tag);
    const rows = (
      this.db
        .prepare('SELECT external_user_id, key_version, tag, salt, hash FROM user_pins WHERE tenant_id = ? AND tag IN (SELECT value FROM json_each(?))')
        .all(tenantId, JSON.stringify([...new Set(wanted.values())])) as { external_user_id: string; key_version: number | null; tag: number; salt: Buffer; hash: Buffer }[]
    ).filter((r) => wanted.get(r.key_version) === r.tag);
    // no row under the tag still costs one scrypt run: the time taken must not tell a PIN in use
    // from one that is not (the rows are checked in parallel on libuv's pool)
    if (rows.length === 0) await scrypt(pin, DUMMY_SALT, HASH_BYTES, SCRYPT);
    const checks = await Promise.all(rows.map(async (r) => crypto.timingSafeEqual(await scrypt(pin, r.salt, HASH_BYTES, SCRYPT), r.hash)));
    return rows.filter((_, i) => checks[i]).map((r) => r.external_user_id);
  }
}
