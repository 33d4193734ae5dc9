import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { EmbeddingCipher, MASTER_KEY_FILE, StoreError, loadMasterKey, opensKeyCheck, parseMasterKey } from './crypto.ts';
import { DATABASE_FILE } from './database.ts';
import { openStore } from './index.ts';

/** Written by a running service into its data directory; `restore` refuses while it is there. */
export const PID_FILE = 'authface.pid';

/** The pid of a live service using this data directory, or null. */
export function runningService(dataDir: string): number | null {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(path.join(dataDir, PID_FILE), 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : null;
  }
}

export interface BackupSummary {
  file: string;
  bytes: number;
  tenants: number;
  users: number;
  templates: number;
}

function summarise(db: Database.Database, file: string): BackupSummary {
  const count = (sql: string) => (db.prepare(sql).get() as { n: number }).n;
  return {
    file,
    bytes: fs.statSync(file).size,
    tenants: count('SELECT COUNT(*) AS n FROM tenants'),
    users: count('SELECT COUNT(*) AS n FROM users WHERE deleted_at IS NULL'),
    templates: count('SELECT COUNT(*) AS n FROM templates'),
  };
}

/**
 * A consistent copy of the database while the service keeps running (SQLite's online backup),
 * written 0600 next to its destination and renamed into place. Templates stay sealed: the key is
 * not in the backup, so keep master.key (or AUTHFACE_MASTER_KEY) safe separately.
 */
export async function backupDatabase(dataDir: string, masterKey: string | undefined, out: string): Promise<BackupSummary> {
  const store = openStore(dataDir, masterKey, { mustExist: true }); // proves the key before copying
  const target = path.resolve(out);
  const partial = `${target}.partial`;
  try {
    fs.rmSync(partial, { force: true });
    fs.closeSync(fs.openSync(partial, 'wx', 0o600));
    await store.db.backup(partial);
    // a copy in WAL mode would grow -wal and -shm files beside it as soon as it is opened (found:
    // left beside the output): one file, in rollback-journal mode (a restored copy is set back to WAL)
    const copy = new Database(partial);
    let summary: BackupSummary;
    try {
      copy.pragma('journal_mode = DELETE');
      summary = summarise(copy, partial);
    } finally {
      copy.close();
    }
    fs.chmodSync(partial, 0o600);
    fsync(partial);
    fs.renameSync(partial, target);
    return { ...summary, file: target };
  } finally {
    fs.rmSync(partial, { force: true });
    store.close();
  }
}

/**
 * Replaces the database with a backup. Nothing is replaced until the backup has passed SQLite's
 * integrity check and its key check opens with the key (AUTHFACE_MASTER_KEY, `keyFile`, or the
 * data directory's master.key). The database it replaces is kept beside it, renamed.
 */
export function restoreDatabase(dataDir: string, backup: string, key: { env?: string; keyFile?: string }): BackupSummary & { keptAs: string | null } {
  const running = runningService(dataDir);
  if (running !== null) throw new StoreError(`a service is running (pid ${running}) on ${dataDir}: stop it first`);
  if (!fs.existsSync(backup)) throw new StoreError(`no such backup: ${backup}`);

  const keyText = key.keyFile ? fs.readFileSync(key.keyFile, 'utf8').trim() : undefined;
  const masterKey = keyText
    ? parseMasterKey(keyText, key.keyFile as string)
    : key.env
      ? parseMasterKey(key.env, 'AUTHFACE_MASTER_KEY')
      : fs.existsSync(path.join(dataDir, MASTER_KEY_FILE))
        ? loadMasterKey(dataDir, undefined)
        : null;
  if (!masterKey) throw new StoreError(`no key to check the backup with: give --key-file (the master.key saved with it) or set AUTHFACE_MASTER_KEY`);

  const source = new Database(backup, { readonly: true, fileMustExist: true });
  let summary: BackupSummary;
  try {
    const integrity = source.pragma('integrity_check', { simple: true });
    if (integrity !== 'ok') throw new StoreError(`${backup} is damaged (integrity check: ${String(integrity)})`);
    const check = source.prepare(`SELECT value FROM meta WHERE key = 'key_check'`).get() as { value: Buffer } | undefined;
    if (!check || !opensKeyCheck(new EmbeddingCipher(masterKey), check.value)) {
      throw new StoreError(`the key does not open this backup: give --key-file with the master.key that was in use when it was made`);
    }
    summary = summarise(source, backup);
  } catch (err) {
    if (err instanceof StoreError) throw err;
    throw new StoreError(`${backup} is not an Auth Face backup (${(err as Error).message})`);
  } finally {
    source.close();
  }

  // verified: now, and only now, change the data directory
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const db = path.join(dataDir, DATABASE_FILE);
  const incoming = `${db}.restoring`;
  fs.copyFileSync(backup, incoming);
  fs.chmodSync(incoming, 0o600);
  fsync(incoming);
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  let keptAs: string | null = null;
  if (fs.existsSync(db)) {
    keptAs = `${db}.before-restore-${stamp}`;
    fs.renameSync(db, keptAs);
  }
  // a WAL belongs to the database it was written for: never let it replay into the restored one
  for (const f of [`${db}-wal`, `${db}-shm`]) fs.rmSync(f, { force: true });
  fs.renameSync(incoming, db);
  if (keyText) {
    const keyPath = path.join(dataDir, MASTER_KEY_FILE);
    if (fs.existsSync(keyPath) && fs.readFileSync(keyPath, 'utf8').trim() !== keyText) fs.renameSync(keyPath, `${keyPath}.before-restore-${stamp}`);
    fs.writeFileSync(keyPath, `${keyText}\n`, { mode: 0o600 });
    fsync(keyPath);
  }
  fsync(dataDir);
  return { ...summary, file: db, bytes: fs.statSync(db).size, keptAs };
}

function fsync(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
