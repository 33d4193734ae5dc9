import { AuditLog } from './audit.ts';
import { EmbeddingCipher, loadMasterKey } from './crypto.ts';
import { type Db, openDatabase } from './database.ts';
import { SessionStore } from './sessions.ts';
import { TenantStore } from './tenants.ts';
import { UserStore } from './users.ts';

export interface Store {
  db: Db;
  tenants: TenantStore;
  users: UserStore;
  sessions: SessionStore;
  audit: AuditLog;
  close(): void;
}

/** Opens (and migrates) the device database in the data directory, with the embedding key. */
export function openStore(dataDir: string, masterKey: string | undefined): Store {
  const cipher = new EmbeddingCipher(loadMasterKey(dataDir, masterKey));
  const db = openDatabase(dataDir);
  return {
    db,
    tenants: new TenantStore(db),
    users: new UserStore(db, cipher),
    sessions: new SessionStore(db),
    audit: new AuditLog(db),
    close: () => db.close(),
  };
}
