import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { DLIB_RESNET } from '../biometrics/matchers/index.ts';
import { type EmbeddingCipher, StoreError, legacyTemplateAad, templateAad } from './crypto.ts';
import { eraseIdentity } from './erasure.ts';

export type Db = Database.Database;

export const DATABASE_FILE = 'authface.db';

/** What a migration written in code may need: the key that seals templates. */
export interface MigrationContext {
  cipher: EmbeddingCipher;
}

/**
 * Schema migrations, applied in order inside one transaction each. Append new entries; never
 * edit an applied one. Users carry a version and a tombstone (`deleted_at`) so that a later
 * replication layer can ship changes between devices without a schema rewrite.
 */
const migrations: readonly (string | ((db: Db, ctx: MigrationContext) => void))[] = [
  `
  CREATE TABLE tenants (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    liveness_mode    TEXT NOT NULL CHECK (liveness_mode IN ('passive', 'active')),
    allowed_origins  TEXT NOT NULL,           -- JSON array of origins
    created_at       TEXT NOT NULL
  );
  CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    key_hash    BLOB NOT NULL UNIQUE,          -- SHA-256 of the key; the key itself is never stored
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
  );
  CREATE TABLE users (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants(id),
    external_user_id  TEXT NOT NULL,
    version           INTEGER NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    deleted_at        TEXT,                    -- tombstone: set on deletion, templates erased
    UNIQUE (tenant_id, external_user_id)
  );
  CREATE TABLE templates (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    version     INTEGER NOT NULL,
    active      INTEGER NOT NULL CHECK (active IN (0, 1)),
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,                 -- AES-256-GCM(embedding) with its tag appended
    created_at  TEXT NOT NULL,
    UNIQUE (user_id, version)
  );
  CREATE INDEX templates_active ON templates (user_id) WHERE active = 1;
  CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants(id),
    client_state      TEXT NOT NULL,
    flow              TEXT NOT NULL,
    external_user_id  TEXT,
    redirect_url      TEXT NOT NULL,
    token_hash        BLOB NOT NULL UNIQUE,
    status            TEXT NOT NULL,
    reason            TEXT,
    score             REAL,
    result_user_id    TEXT,                    -- external id decided by the flow (identify)
    event_id          TEXT,
    created_at        TEXT NOT NULL,
    expires_at        TEXT NOT NULL,
    bound_at          TEXT,
    completed_at      TEXT,
    UNIQUE (tenant_id, client_state)
  );
  CREATE INDEX sessions_open ON sessions (expires_at) WHERE status IN ('pending', 'in_progress');
  CREATE TABLE audit_events (
    id                TEXT PRIMARY KEY,        -- evt_<uuid>
    tenant_id         TEXT NOT NULL,
    type              TEXT NOT NULL,
    flow              TEXT,
    session_id        TEXT,
    external_user_id  TEXT,
    result            TEXT,
    reason            TEXT,
    score             REAL,
    created_at        TEXT NOT NULL
  );
  CREATE INDEX audit_tenant_time ON audit_events (tenant_id, created_at);
  `,
  // the active-liveness challenge drawn for a session (JSON), fixed for its whole life
  `ALTER TABLE sessions ADD COLUMN challenge TEXT;`,
  // kiosk and turnstile sessions belong to a door of this device
  `ALTER TABLE sessions ADD COLUMN door_id TEXT;`,
  // tamper evidence: templates name their model; a user whose template cannot be opened is
  // flagged for re-enrolment; the key check tells a wrong master key from damaged data;
  // retention sweeps by time; erasure finds a person's rows by their id
  `
  ALTER TABLE templates ADD COLUMN model TEXT;
  ALTER TABLE users ADD COLUMN reenrolment_reason TEXT;
  CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
  CREATE INDEX sessions_completed ON sessions (completed_at) WHERE completed_at IS NOT NULL;
  CREATE INDEX sessions_user ON sessions (tenant_id, external_user_id) WHERE external_user_id IS NOT NULL;
  CREATE INDEX sessions_result_user ON sessions (tenant_id, result_user_id) WHERE result_user_id IS NOT NULL;
  CREATE INDEX audit_time ON audit_events (created_at);
  CREATE INDEX audit_user ON audit_events (tenant_id, external_user_id) WHERE external_user_id IS NOT NULL;
  `,
  // re-seal every template so its authenticated data binds tenant, external_user_id, version and
  // model (before, only the row id and version: swapping two users' ids swapped who they were);
  // its index is LEGACY_SEAL_SCHEMA
  resealTemplates,
  // tombstones and the rows of people deleted before erasure existed lose their identifier too
  eraseDeletedIdentities,
  // nonces of remote commands carried out: a replay is refused, also after a restart
  `CREATE TABLE command_nonces (nonce TEXT PRIMARY KEY, keep_until TEXT NOT NULL);
   CREATE INDEX command_nonces_until ON command_nonces (keep_until);`,
  // the second factor: PINs as salted scrypt hashes with a keyed 16-bit tag to find them (pins.ts);
  // a face+pin session holds the users whose PIN was typed until it ends
  `CREATE TABLE user_pins (
     tenant_id         TEXT NOT NULL,
     external_user_id  TEXT NOT NULL,
     tag               INTEGER NOT NULL,
     salt              BLOB NOT NULL,
     hash              BLOB NOT NULL,
     created_at        TEXT NOT NULL,
     PRIMARY KEY (tenant_id, external_user_id)
   );
   CREATE INDEX user_pins_tag ON user_pins (tenant_id, tag);
   ALTER TABLE sessions ADD COLUMN factor TEXT NOT NULL DEFAULT 'face';
   ALTER TABLE sessions ADD COLUMN candidates TEXT;
   ALTER TABLE audit_events ADD COLUMN factor TEXT;`,
  // fleet replication: the last change of each tenant's log applied here, moved in the same
  // transaction as the data it applied (sync/replica.ts)
  `CREATE TABLE sync_cursors (tenant_id TEXT PRIMARY KEY, applied_seq INTEGER NOT NULL, updated_at TEXT NOT NULL);
   CREATE TABLE sync_outbox (change_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, external_user_id TEXT NOT NULL,
                             kind TEXT NOT NULL CHECK (kind IN ('upsert', 'delete')), version INTEGER NOT NULL, created_at TEXT NOT NULL);`,
  // door events name their door, and are forwarded to the hub once (forwarded_at set on its ack)
  `ALTER TABLE audit_events ADD COLUMN door_id TEXT;
   ALTER TABLE audit_events ADD COLUMN forwarded_at TEXT;
   CREATE INDEX audit_unforwarded ON audit_events (tenant_id, created_at) WHERE door_id IS NOT NULL AND forwarded_at IS NULL;`,
  // a snapshot of the tenant's users being loaded (sync/replica.ts): the hub's head when it began
  // and the last user applied, moved with each chunk, so a crash resumes where it was
  `CREATE TABLE sync_snapshots (tenant_id TEXT PRIMARY KEY, snapshot_seq INTEGER, after_user TEXT, started_at TEXT NOT NULL);
   CREATE INDEX sync_outbox_user ON sync_outbox (tenant_id, external_user_id);`,
  // the groups each person of a fleet tenant is in (user.groups of the hub's log; store/groups.ts)
  `CREATE TABLE group_members (tenant_id TEXT NOT NULL, external_user_id TEXT NOT NULL, group_name TEXT NOT NULL,
                              PRIMARY KEY (tenant_id, external_user_id, group_name));
   CREATE INDEX group_members_group ON group_members (tenant_id, group_name);`,
  // the device's own console: its admins (made with the CLI) and sign-in sessions (hashes of the tokens)
  `CREATE TABLE console_admins (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE console_sessions (token_hash BLOB PRIMARY KEY, admin TEXT NOT NULL REFERENCES console_admins (name) ON DELETE CASCADE,
                                  csrf TEXT NOT NULL, expires_at TEXT NOT NULL);`,
  // a template per model: a person holds one of each model at a version (README, "Moving to a new
  // model"); every template already names its model (resealTemplates)
  `CREATE TABLE templates_by_model (
     id          TEXT PRIMARY KEY,
     user_id     TEXT NOT NULL REFERENCES users(id),
     version     INTEGER NOT NULL,
     model       TEXT NOT NULL,
     active      INTEGER NOT NULL CHECK (active IN (0, 1)),
     nonce       BLOB NOT NULL,
     ciphertext  BLOB NOT NULL,
     created_at  TEXT NOT NULL,
     UNIQUE (user_id, version, model)
   );
   INSERT INTO templates_by_model (id, user_id, version, model, active, nonce, ciphertext, created_at)
     SELECT id, user_id, version, COALESCE(model, 'dlib-resnet-v1/authface-align-1'), active, nonce, ciphertext, created_at FROM templates;
   DROP TABLE templates;
   ALTER TABLE templates_by_model RENAME TO templates;
   CREATE INDEX templates_active ON templates (user_id) WHERE active = 1;`,
  // the outbox also carries a migration's templates of further models (a person's version unchanged)
  `CREATE TABLE sync_outbox_kinds (change_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, external_user_id TEXT NOT NULL,
                                  kind TEXT NOT NULL CHECK (kind IN ('upsert', 'delete', 'templates')), version INTEGER NOT NULL, created_at TEXT NOT NULL);
   INSERT INTO sync_outbox_kinds SELECT change_id, tenant_id, external_user_id, kind, version, created_at FROM sync_outbox ORDER BY rowid;
   DROP TABLE sync_outbox;
   ALTER TABLE sync_outbox_kinds RENAME TO sync_outbox;
   CREATE INDEX sync_outbox_user ON sync_outbox (tenant_id, external_user_id);`,
  // further captures of a person (a guarded adaptive update, README "Templates from door
  // captures"): slot 0 is the enrolment template, 1… the captures that joined it
  `CREATE TABLE templates_with_captures (
     id          TEXT PRIMARY KEY,
     user_id     TEXT NOT NULL REFERENCES users(id),
     version     INTEGER NOT NULL,
     model       TEXT NOT NULL,
     capture     INTEGER NOT NULL DEFAULT 0 CHECK (capture >= 0),
     active      INTEGER NOT NULL CHECK (active IN (0, 1)),
     nonce       BLOB NOT NULL,
     ciphertext  BLOB NOT NULL,
     created_at  TEXT NOT NULL,
     UNIQUE (user_id, version, model, capture)
   );
   INSERT INTO templates_with_captures (id, user_id, version, model, active, nonce, ciphertext, created_at)
     SELECT id, user_id, version, model, active, nonce, ciphertext, created_at FROM templates;
   DROP TABLE templates;
   ALTER TABLE templates_with_captures RENAME TO templates;
   CREATE INDEX templates_active ON templates (user_id) WHERE active = 1;`,
  // a snapshot is staged until its last chunk is in (sync/replica.ts): the users as the hub sent
  // them (sealed under the tenant key; NULL: erased by the log during the load), the tenant's
  // settings, and the head and digest the hub announced, checked once the log reaches that head;
  // a snapshot an earlier release was applying chunk by chunk starts again, staged
  `CREATE TABLE sync_snapshot_users (tenant_id TEXT NOT NULL, external_user_id TEXT NOT NULL, version INTEGER NOT NULL, user TEXT,
                                     PRIMARY KEY (tenant_id, external_user_id));
   ALTER TABLE sync_snapshots ADD COLUMN tenant TEXT;
   ALTER TABLE sync_snapshots ADD COLUMN complete INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE sync_snapshots ADD COLUMN head_seq INTEGER;
   ALTER TABLE sync_snapshots ADD COLUMN digest TEXT;
   CREATE TABLE sync_snapshot_checks (tenant_id TEXT PRIMARY KEY, head_seq INTEGER NOT NULL, digest TEXT NOT NULL);
   UPDATE sync_snapshots SET snapshot_seq = NULL, after_user = NULL;`,
  // a tenant's own floor for the anti-spoofing network (store/tenants.ts; NULL: the device's or the service's)
  `ALTER TABLE tenants ADD COLUMN pad_threshold REAL CHECK (pad_threshold BETWEEN 0 AND 1);`,
  // a fleet PIN (the hub's log): its tag is keyed by this version of the tenant key (NULL: by this device's master key)
  `ALTER TABLE user_pins ADD COLUMN key_version INTEGER;`,
  // where this device is in the hub's log (sync/replica.ts): the change it applied last and the
  // log's epoch, checked with the hub when the epoch changes (a database failover may rewind the
  // log); the deletions it applied or made (under the keyed pseudonym of the tombstone), so a
  // snapshot of a rewound log cannot bring a deleted person back; and an outbox deletion sent again
  // because the hub's log lost it
  `ALTER TABLE sync_cursors ADD COLUMN change_id TEXT;
   ALTER TABLE sync_cursors ADD COLUMN epoch TEXT;
   ALTER TABLE sync_snapshots ADD COLUMN epoch TEXT;
   ALTER TABLE sync_snapshots ADD COLUMN seq_change_id TEXT;
   ALTER TABLE sync_outbox ADD COLUMN lost INTEGER NOT NULL DEFAULT 0;
   CREATE TABLE sync_erasures (tenant_id TEXT NOT NULL, pseudonym TEXT NOT NULL, version INTEGER NOT NULL, seq INTEGER, epoch TEXT, erased_at TEXT NOT NULL,
                               PRIMARY KEY (tenant_id, pseudonym));`,
];

/**
 * Opens the device database in `dataDir` (created 0700, files 0600 whatever the umask). Commits
 * are synced to disk before they return (WAL with synchronous=FULL): an enrolment acknowledged
 * to a client survives a power cut. Freed content is overwritten (secure_delete), so an erased
 * person leaves nothing behind in free pages.
 */
export function openDatabase(dataDir: string, options: { mustExist?: boolean } = {}): Db {
  const file = path.join(dataDir, DATABASE_FILE);
  if (options.mustExist && !fs.existsSync(file)) {
    throw new StoreError(`there is no database in ${dataDir}: start the service once there, or set AUTHFACE_DATA_DIR to the data directory in use`);
  }
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  tightenMode(dataDir, 0o700);
  // create the file 0600 ourselves: SQLite gives its -wal and -shm files the database file's mode
  fs.closeSync(fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600));
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('secure_delete = ON');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  for (const f of [file, `${file}-wal`, `${file}-shm`]) tightenMode(f, 0o600);
  return db;
}

/** Removes group and other permissions from a file we own (an older version created them 0644). */
function tightenMode(file: string, mode: number): void {
  try {
    const st = fs.statSync(file);
    if ((st.mode & 0o077) !== 0 && st.uid === process.getuid?.()) fs.chmodSync(file, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** The schema version whose templates are still sealed with legacyTemplateAad (before resealTemplates). */
export const LEGACY_SEAL_SCHEMA = migrations.indexOf(resealTemplates);

export function schemaVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

export function migrate(db: Db, ctx: MigrationContext): void {
  for (let v = schemaVersion(db); v < migrations.length; v++) {
    const step = migrations[v];
    db.transaction(() => {
      if (typeof step === 'string') db.exec(step);
      else step(db, ctx);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

function resealTemplates(db: Db, { cipher }: MigrationContext): void {
  // templates from before models were named were all made by the first model, dlib's
  const model = DLIB_RESNET.id;
  const rows = db
    .prepare(
      `SELECT t.id, t.user_id, t.version, t.active, t.nonce, t.ciphertext, u.tenant_id, u.external_user_id
       FROM templates t JOIN users u ON u.id = t.user_id`,
    )
    .all() as { id: string; user_id: string; version: number; active: number; nonce: Buffer; ciphertext: Buffer; tenant_id: string; external_user_id: string }[];
  const update = db.prepare('UPDATE templates SET nonce = ?, ciphertext = ?, model = ? WHERE id = ?');
  const setModel = db.prepare('UPDATE templates SET model = ? WHERE id = ?');
  const flag = db.prepare(`UPDATE users SET reenrolment_reason = 'template_unreadable' WHERE id = ?`);
  for (const r of rows) {
    let embedding: Float32Array;
    try {
      embedding = cipher.open(r.nonce, r.ciphertext, legacyTemplateAad(r.user_id, r.version));
    } catch {
      // already unreadable: it stays sealed as it was, and its user must enrol again
      setModel.run(model, r.id);
      if (r.active) flag.run(r.user_id);
      continue;
    }
    const sealed = cipher.seal(embedding, templateAad({ tenantId: r.tenant_id, externalUserId: r.external_user_id, version: r.version, model }));
    update.run(sealed.nonce, sealed.ciphertext, model, r.id);
  }
}

function eraseDeletedIdentities(db: Db, { cipher }: MigrationContext): void {
  const tombstones = db
    .prepare(`SELECT id, tenant_id, external_user_id FROM users WHERE deleted_at IS NOT NULL AND external_user_id NOT LIKE 'erased:%'`)
    .all() as { id: string; tenant_id: string; external_user_id: string }[];
  const rename = db.prepare('UPDATE users SET external_user_id = ? WHERE id = ?');
  for (const t of tombstones) {
    const pseudonym = cipher.pseudonym(t.tenant_id, t.external_user_id);
    eraseIdentity(db, t.tenant_id, t.external_user_id, pseudonym);
    rename.run(pseudonym, t.id);
  }
}

/** ISO-8601 UTC timestamp with milliseconds, the one time format stored. */
export function now(): string {
  return new Date().toISOString();
}
