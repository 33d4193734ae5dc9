import crypto from 'node:crypto';
import type pg from 'pg';
import { generateCommandKeys } from '../access/signed-command.ts';
import type { TenantKey } from '../sync/envelope.ts';
import { HubError } from './errors.ts';

export type { TenantKey };

/** A version of a tenant key and the first change it authenticates (the log before it is under older versions). */
export interface TenantKeyVersion extends TenantKey {
  sinceSeq: number;
}

/**
 * How long a hub process uses its copy of a tenant's current key version before asking the
 * database again: another process (`authface hub device revoke`) may have rotated it. Changes are
 * always authenticated under the version read inside their own transaction (`current(…, db)`).
 */
const CURRENT_KEY_TTL_MS = 1000;

const TENANT_KEY_AAD = 'authface:hub-tenant-key:v1';
const COMMAND_KEY_AAD = 'authface:hub-command-key:v1';

/**
 * The hub's keys, stored sealed under its master key (AES-256-GCM, bound to what each key is):
 * each tenant's key versions, which seal templates and authenticate every sync message, and each
 * tenant's Ed25519 command key, which signs remote commands and fleet notices. A key version never
 * changes once made, so opened versions are kept; which version is current is asked again after
 * CURRENT_KEY_TTL_MS.
 */
export class HubKeys {
  readonly #versions = new Map<string, TenantKeyVersion>();
  readonly #current = new Map<string, { keyVersion: number; checkedAt: number }>();

  constructor(
    private readonly pool: pg.Pool,
    readonly masterKey: Buffer | null,
    /** Runs `run` in a transaction that holds the tenant's row (false: no such tenant). */
    private readonly withTenant: <T>(tenantId: string, run: (db: pg.PoolClient) => Promise<T>) => Promise<T>,
    /** Runs `done` once `db`'s transaction commits. */
    private readonly afterCommit: (db: pg.PoolClient, done: () => void) => void,
  ) {}

  /**
   * The tenant's current key (its first made on first use). With `db`, the caller's transaction
   * holds the tenant's row: the version is read there, exactly (a rotation cannot pass it).
   */
  async current(tenantId: string, db?: pg.PoolClient): Promise<TenantKey> {
    if (!db) {
      const known = this.#current.get(tenantId);
      if (known && Date.now() - known.checkedAt < CURRENT_KEY_TTL_MS) return this.#versions.get(`${tenantId}:${known.keyVersion}`) as TenantKeyVersion;
      // versions are only ever added: the newest committed one is current, read without locking
      // the tenant's row (this runs for every device message); only the first is made under it
      const opened = await this.#latest(tenantId, this.pool);
      if (!opened) return this.withTenant(tenantId, (tx) => this.current(tenantId, tx));
      this.#current.set(tenantId, { keyVersion: opened.keyVersion, checkedAt: Date.now() });
      return opened;
    }
    const opened = (await this.#latest(tenantId, db)) ?? (await this.#make(db, tenantId, 1, 1));
    this.afterCommit(db, () => this.#current.set(tenantId, { keyVersion: opened.keyVersion, checkedAt: Date.now() }));
    return opened;
  }

  async #latest(tenantId: string, db: pg.Pool | pg.PoolClient): Promise<TenantKeyVersion | undefined> {
    const r = await db.query<{ key_version: number }>('SELECT key_version FROM hub_tenant_keys WHERE tenant_id = $1 ORDER BY key_version DESC LIMIT 1', [tenantId]);
    return r.rows[0] && this.version(tenantId, r.rows[0].key_version, db);
  }

  /** A version of the tenant's key (to open a template sealed under it), or undefined when there is no such version. */
  async version(tenantId: string, keyVersion: number, db: pg.Pool | pg.PoolClient = this.pool): Promise<TenantKeyVersion | undefined> {
    const cached = this.#versions.get(`${tenantId}:${keyVersion}`);
    if (cached) return cached;
    const r = await db.query<{ key_version: number; since_seq: string; nonce: Buffer; sealed: Buffer }>(
      'SELECT key_version, since_seq, nonce, sealed FROM hub_tenant_keys WHERE tenant_id = $1 AND key_version = $2',
      [tenantId, keyVersion],
    );
    return r.rows[0] && this.#open(tenantId, r.rows[0]);
  }

  /** Every version of the tenant's key, oldest first: what a device needs to read the whole log and a snapshot. */
  async all(tenantId: string): Promise<TenantKeyVersion[]> {
    await this.current(tenantId); // the first is made on first use
    const r = await this.pool.query<{ key_version: number; since_seq: string; nonce: Buffer; sealed: Buffer }>(
      'SELECT key_version, since_seq, nonce, sealed FROM hub_tenant_keys WHERE tenant_id = $1 ORDER BY key_version',
      [tenantId],
    );
    return r.rows.map((row) => this.#open(tenantId, row));
  }

  /**
   * A new version of the tenant's key, current from `sinceSeq` (the next change of the log). The
   * caller's transaction holds the tenant's row, so no change is sequenced under the old version
   * after this one commits.
   */
  async rotate(db: pg.PoolClient, tenantId: string, sinceSeq: number): Promise<TenantKeyVersion> {
    const latest = await this.current(tenantId, db);
    return this.#make(db, tenantId, latest.keyVersion + 1, sinceSeq);
  }

  async #make(db: pg.PoolClient, tenantId: string, keyVersion: number, sinceSeq: number): Promise<TenantKeyVersion> {
    const key = crypto.randomBytes(32);
    const { nonce, sealed } = this.seal(key, [TENANT_KEY_AAD, tenantId, keyVersion]);
    await db.query('INSERT INTO hub_tenant_keys (tenant_id, key_version, since_seq, nonce, sealed) VALUES ($1, $2, $3, $4, $5)', [tenantId, keyVersion, sinceSeq, nonce, sealed]);
    const made = { key, keyVersion, sinceSeq };
    // kept once the transaction commits: a key made in one that rolls back never existed
    this.afterCommit(db, () => {
      this.#versions.set(`${tenantId}:${keyVersion}`, made);
      this.#current.set(tenantId, { keyVersion, checkedAt: Date.now() });
    });
    return made;
  }

  #open(tenantId: string, row: { key_version: number; since_seq: string; nonce: Buffer; sealed: Buffer }): TenantKeyVersion {
    const key = this.unseal(row, [TENANT_KEY_AAD, tenantId, row.key_version], `the key of tenant ${tenantId}`);
    const opened = { key, keyVersion: row.key_version, sinceSeq: Number(row.since_seq) };
    this.#versions.set(`${tenantId}:${row.key_version}`, opened);
    return opened;
  }

  /**
   * The Ed25519 key the hub signs the tenant's remote commands and fleet notices with (made on
   * first use); devices get its public half when they join.
   */
  async commandKey(tenantId: string): Promise<{ publicKey: string; privateKey: crypto.KeyObject }> {
    return this.withTenant(tenantId, async (db) => {
      const aad = [COMMAND_KEY_AAD, tenantId];
      const r = await db.query<{ public_key: string; nonce: Buffer; sealed: Buffer }>('SELECT public_key, nonce, sealed FROM hub_command_keys WHERE tenant_id = $1', [tenantId]);
      if (r.rows[0]) {
        const pem = this.unseal(r.rows[0], aad, `the command key of tenant ${tenantId}`);
        return { publicKey: r.rows[0].public_key, privateKey: crypto.createPrivateKey(pem.toString()) };
      }
      const { privatePem, publicKey } = generateCommandKeys();
      const { nonce, sealed } = this.seal(Buffer.from(privatePem), aad);
      await db.query('INSERT INTO hub_command_keys (tenant_id, public_key, nonce, sealed) VALUES ($1, $2, $3, $4)', [tenantId, publicKey, nonce, sealed]);
      return { publicKey, privateKey: crypto.createPrivateKey(privatePem) };
    });
  }

  /** A secret sealed under the master key (AES-256-GCM), bound to `aad`. */
  seal(secret: Buffer, aad: unknown[]): { nonce: Buffer; sealed: Buffer } {
    const nonce = crypto.randomBytes(12);
    const cipher = crypto.createCipheriv('aes-256-gcm', this.#masterKey(), nonce);
    cipher.setAAD(Buffer.from(JSON.stringify(aad)));
    return { nonce, sealed: Buffer.concat([cipher.update(secret), cipher.final(), cipher.getAuthTag()]) };
  }

  unseal(box: { nonce: Buffer; sealed: Buffer }, aad: unknown[], what: string): Buffer {
    const decipher = crypto.createDecipheriv('aes-256-gcm', this.#masterKey(), box.nonce);
    decipher.setAAD(Buffer.from(JSON.stringify(aad)));
    decipher.setAuthTag(box.sealed.subarray(box.sealed.length - 16));
    try {
      return Buffer.concat([decipher.update(box.sealed.subarray(0, box.sealed.length - 16)), decipher.final()]);
    } catch {
      throw new HubError(`the hub master key does not open ${what}: set AUTHFACE_HUB_MASTER_KEY to the key the hub was set up with`);
    }
  }

  #masterKey(): Buffer {
    if (!this.masterKey) throw new HubError('the hub needs AUTHFACE_HUB_MASTER_KEY: it opens the tenant keys that seal templates and authenticate every change');
    return this.masterKey;
  }
}
