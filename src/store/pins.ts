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

/**
 * PINs of the second factor (`face+pin` doors). A PIN is kept only as a salted scrypt hash. To find
 * who holds a PIN typed at a door without hashing it against every user, each row also carries a
 * 16-bit tag of the PIN, keyed by the master key: the tag picks a few rows, and only those are
 * checked with scrypt. Without the master key the tag says nothing; with it, it still leaves
 * every PIN among thousands of candidates, each costing a scrypt run.
 */
export class PinStore {
  constructor(
    private readonly db: Db,
    private readonly tagOf: (tenantId: string, pin: string) => number,
  ) {}

  async set(tenantId: string, externalUserId: string, pin: string): Promise<void> {
    const salt = crypto.randomBytes(16);
    const hash = await scrypt(pin, salt, HASH_BYTES, SCRYPT);
    this.db
      .prepare(
        `INSERT INTO user_pins (tenant_id, external_user_id, tag, salt, hash, created_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (tenant_id, external_user_id) DO UPDATE SET tag = excluded.tag, salt = excluded.salt, hash = excluded.hash, created_at = excluded.created_at`,
      )
      .run(tenantId, externalUserId, this.tagOf(tenantId, pin), salt, hash, now());
  }

  remove(tenantId: string, externalUserId: string): boolean {
    return this.db.prepare('DELETE FROM user_pins WHERE tenant_id = ? AND external_user_id = ?').run(tenantId, externalUserId).changes === 1;
  }

  has(tenantId: string, externalUserId: string): boolean {
    return this.db.prepare('SELECT 1 FROM user_pins WHERE tenant_id = ? AND external_user_id = ?').get(tenantId, externalUserId) !== undefined;
  }

  count(tenantId: string): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM user_pins WHERE tenant_id = ?').get(tenantId) as { n: number }).n;
  }

  /** The users of the tenant whose PIN this is (usually one, or none). */
  async holders(tenantId: string, pin: string): Promise<string[]> {
    const rows = this.db
      .prepare('SELECT external_user_id, salt, hash FROM user_pins WHERE tenant_id = ? AND tag = ?')
      .all(tenantId, this.tagOf(tenantId, pin)) as { external_user_id: string; salt: Buffer; hash: Buffer }[];
    // no row under the tag still costs one scrypt run: the time taken must not tell a PIN in use
    // from one that is not (the rows are checked in parallel on libuv's pool)
    if (rows.length === 0) await scrypt(pin, DUMMY_SALT, HASH_BYTES, SCRYPT);
    const checks = await Promise.all(rows.map(async (r) => crypto.timingSafeEqual(await scrypt(pin, r.salt, HASH_BYTES, SCRYPT), r.hash)));
    return rows.filter((_, i) => checks[i]).map((r) => r.external_user_id);
  }
}
