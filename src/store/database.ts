import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';

export type Db = Database.Database;

/**
 * Schema migrations, applied in order inside one transaction each. Append new entries; never
 * edit an applied one. Users carry a version and a tombstone (`deleted_at`) so that a later
 * replication layer can ship changes between devices without a schema rewrite.
 */
const migrations: readonly string[] = [
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
];

export function openDatabase(dataDir: string): Db {
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const db = new Database(path.join(dataDir, 'authface.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let v = current; v < migrations.length; v++) {
    db.transaction(() => {
      db.exec(migrations[v]);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

/** ISO-8601 UTC timestamp with milliseconds, the one time format stored. */
export function now(): string {
  return new Date().toISOString();
}
