import type { ModelId } from '../biometrics/matchers/index.ts';
import { AuditLog } from './audit.ts';
import { EmbeddingCipher, StoreError, legacyTemplateAad, loadMasterKey, opensKeyCheck, sealKeyCheck } from './crypto.ts';
import { type Db, LEGACY_SEAL_SCHEMA, migrate, openDatabase, schemaVersion } from './database.ts';
import { eraseIdentity } from './erasure.ts';
import { GroupStore } from './groups.ts';
import { CommandNonces } from './nonces.ts';
import { PinStore } from './pins.ts';
import { SessionStore } from './sessions.ts';
import { TenantStore } from './tenants.ts';
import { UserStore } from './users.ts';

export { StoreError } from './crypto.ts';

export interface Store {
  db: Db;
  dataDir: string;
  tenants: TenantStore;
  users: UserStore;
  sessions: SessionStore;
  audit: AuditLog;
  nonces: CommandNonces;
  pins: PinStore;
  groups: GroupStore;
  /**
   * Deletes a user's templates and every trace of their identifier; `record` runs in the same
   * transaction with the pseudonym that replaces it (to audit the deletion). Null: no such user.
   */
  eraseUser<T>(tenantId: string, externalUserId: string, record: (pseudonym: string) => T): T | null;
  /** Removes finished sessions and audit events older than `cutoff` (retention). */
  purgeBefore(cutoff: string): { sessions: number; auditEvents: number };
  close(): void;
}

export interface StoreOptions {
  /** The models whose templates are kept and used (default: every model the service knows). */
  models: readonly ModelId[];
  /** Refuse to create a database where there is none (management commands). */
  mustExist?: boolean;
}

/**
 * Opens (and migrates) the device database in the data directory, with the embedding key. The
 * key is checked before anything is read or written: a wrong key is refused with a clear error,
 * and a missing key file is never replaced while templates sealed with it exist.
 */
export function openStore(dataDir: string, masterKey: string | undefined, options: Partial<StoreOptions> = {}): Store {
  const db = openDatabase(dataDir, { mustExist: options.mustExist });
  try {
    const cipher = new EmbeddingCipher(loadMasterKey(dataDir, masterKey, { sealedTemplates: countTemplates(db) }));
    verifyKey(db, cipher, dataDir);
    migrate(db, { cipher });
    const users = new UserStore(db, cipher, options.models);
    const audit = new AuditLog(db);
    return {
      db,
      dataDir,
      tenants: new TenantStore(db),
      users,
      sessions: new SessionStore(db),
      audit,
      nonces: new CommandNonces(db),
      pins: new PinStore(db, (tenantId, pin) => cipher.pinTag(tenantId, pin)),
      groups: new GroupStore(db),
      eraseUser(tenantId, externalUserId, record) {
        const result = db.transaction(() => {
          const pseudonym = users.delete(tenantId, externalUserId);
          if (!pseudonym) return null;
          eraseIdentity(db, tenantId, externalUserId, pseudonym);
          return { value: record(pseudonym) };
        })();
        // the old page images in the WAL still hold the id: copy the new ones in and empty it
        // (inside a caller's transaction the caller does it after its commit: sync/replica.ts)
        if (result && !db.inTransaction) db.pragma('wal_checkpoint(TRUNCATE)');
        return result && result.value;
      },
      purgeBefore(cutoff) {
        return db.transaction(() => ({
          sessions: db.prepare(`DELETE FROM sessions WHERE completed_at IS NOT NULL AND completed_at < ?`).run(cutoff).changes,
          auditEvents: db.prepare('DELETE FROM audit_events WHERE created_at < ?').run(cutoff).changes,
        }))();
      },
      close: () => db.close(),
    };
  } catch (err) {
    db.close();
    throw err;
  }
}

function tableExists(db: Db, name: string): boolean {
  return db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(name) !== undefined;
}

function countTemplates(db: Db): number {
  return tableExists(db, 'templates') ? (db.prepare('SELECT COUNT(*) AS n FROM templates').get() as { n: number }).n : 0;
}

/**
 * The key check stored in the database must open with this key. A database from before the key
 * check proves the key by opening one of its templates; then the check is written.
 */
function verifyKey(db: Db, cipher: EmbeddingCipher, dataDir: string): void {
  const wrongKey = () =>
    new StoreError(`the master key does not open this database (${dataDir}): set AUTHFACE_MASTER_KEY or restore master.key to the key this data was sealed with`);
  const templates = countTemplates(db);
  const stored = tableExists(db, 'meta') ? (db.prepare(`SELECT value FROM meta WHERE key = 'key_check'`).get() as { value: Buffer } | undefined) : undefined;
  if (stored) {
    if (opensKeyCheck(cipher, stored.value)) return;
    if (templates > 0) throw wrongKey();
  } else if (templates > 0 && schemaVersion(db) <= LEGACY_SEAL_SCHEMA) {
    const rows = db.prepare('SELECT user_id, version, nonce, ciphertext FROM templates LIMIT 20').all() as { user_id: string; version: number; nonce: Buffer; ciphertext: Buffer }[];
    const opens = rows.some((r) => {
      try {
        cipher.open(r.nonce, r.ciphertext, legacyTemplateAad(r.user_id, r.version));
        return true;
      } catch {
        return false;
      }
    });
    if (!opens) throw wrongKey();
  }
  // nothing is sealed under another key: (re)write the check for this one
  db.exec('CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)');
  db.prepare(`INSERT INTO meta (key, value) VALUES ('key_check', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(sealKeyCheck(cipher));
}
