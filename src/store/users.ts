import crypto from 'node:crypto';
import type { EmbeddingCipher } from './crypto.ts';
import { type Db, now } from './database.ts';

export interface User {
  id: string;
  tenantId: string;
  externalUserId: string;
  version: number;
  createdAt: string;
  updatedAt: string;
}

export interface ActiveTemplate {
  tenantId: string;
  externalUserId: string;
  embedding: Float32Array;
}

interface UserRow {
  id: string;
  tenant_id: string;
  external_user_id: string;
  version: number;
  created_at: string;
  updated_at: string;
  deleted_at: string | null;
}

interface TemplateRow {
  user_id: string;
  version: number;
  nonce: Buffer;
  ciphertext: Buffer;
}

/**
 * Enrolled users and their encrypted templates. A user keeps every template version it ever had
 * (only one active); deleting a user erases all of them and leaves a tombstone row.
 */
export class UserStore {
  constructor(
    private readonly db: Db,
    private readonly cipher: EmbeddingCipher,
  ) {}

  /** The live (not deleted) user, if any. */
  get(tenantId: string, externalUserId: string): User | undefined {
    const row = this.db
      .prepare('SELECT * FROM users WHERE tenant_id = ? AND external_user_id = ? AND deleted_at IS NULL')
      .get(tenantId, externalUserId) as UserRow | undefined;
    return row && toUser(row);
  }

  list(tenantId: string, limit: number, offset: number): { total: number; users: User[] } {
    const total = (
      this.db.prepare('SELECT COUNT(*) AS n FROM users WHERE tenant_id = ? AND deleted_at IS NULL').get(tenantId) as {
        n: number;
      }
    ).n;
    const rows = this.db
      .prepare(
        `SELECT * FROM users WHERE tenant_id = ? AND deleted_at IS NULL
         ORDER BY created_at, external_user_id LIMIT ? OFFSET ?`,
      )
      .all(tenantId, limit, offset) as UserRow[];
    return { total, users: rows.map(toUser) };
  }

  /** Creates the user (or revives its tombstone with the next version) with its first template. */
  enroll(tenantId: string, externalUserId: string, embedding: Float32Array): User {
    const ts = now();
    const tomb = this.db
      .prepare('SELECT * FROM users WHERE tenant_id = ? AND external_user_id = ?')
      .get(tenantId, externalUserId) as UserRow | undefined;
    if (tomb && tomb.deleted_at === null) throw new Error('user already enrolled');
    let user: User;
    if (tomb) {
      user = { ...toUser(tomb), version: tomb.version + 1, createdAt: ts, updatedAt: ts };
      this.db
        .prepare('UPDATE users SET version = ?, created_at = ?, updated_at = ?, deleted_at = NULL WHERE id = ?')
        .run(user.version, ts, ts, user.id);
    } else {
      user = { id: crypto.randomUUID(), tenantId, externalUserId, version: 1, createdAt: ts, updatedAt: ts };
      this.db
        .prepare(
          'INSERT INTO users (id, tenant_id, external_user_id, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)',
        )
        .run(user.id, tenantId, externalUserId, user.version, ts, ts);
    }
    this.insertTemplate(user, embedding, ts);
    return user;
  }

  /** Stores a new active template version; earlier versions stay as inactive history. */
  replaceTemplate(user: User, embedding: Float32Array): User {
    const ts = now();
    const next = { ...user, version: user.version + 1, updatedAt: ts };
    this.db.prepare('UPDATE templates SET active = 0 WHERE user_id = ? AND active = 1').run(user.id);
    this.db.prepare('UPDATE users SET version = ?, updated_at = ? WHERE id = ?').run(next.version, ts, user.id);
    this.insertTemplate(next, embedding, ts);
    return next;
  }

  /** Erases every template of the user and leaves a tombstone; false when there is no such user. */
  delete(tenantId: string, externalUserId: string): boolean {
    const user = this.get(tenantId, externalUserId);
    if (!user) return false;
    const ts = now();
    this.db.prepare('DELETE FROM templates WHERE user_id = ?').run(user.id);
    this.db
      .prepare('UPDATE users SET version = version + 1, updated_at = ?, deleted_at = ? WHERE id = ?')
      .run(ts, ts, user.id);
    return true;
  }

  activeEmbedding(user: User): Float32Array | undefined {
    const row = this.db
      .prepare('SELECT user_id, version, nonce, ciphertext FROM templates WHERE user_id = ? AND active = 1')
      .get(user.id) as TemplateRow | undefined;
    return row && this.cipher.open(row.nonce, row.ciphertext, aad(user.id, row.version));
  }

  templateVersions(user: User): { version: number; active: boolean; createdAt: string }[] {
    const rows = this.db
      .prepare('SELECT version, active, created_at FROM templates WHERE user_id = ? ORDER BY version')
      .all(user.id) as { version: number; active: number; created_at: string }[];
    return rows.map((r) => ({ version: r.version, active: r.active === 1, createdAt: r.created_at }));
  }

  /** Every active template of every tenant, decrypted, for building the in-memory 1:N index. */
  *activeTemplates(): Generator<ActiveTemplate> {
    const rows = this.db
      .prepare(
        `SELECT u.tenant_id, u.external_user_id, t.user_id, t.version, t.nonce, t.ciphertext
         FROM templates t JOIN users u ON u.id = t.user_id
         WHERE t.active = 1 AND u.deleted_at IS NULL`,
      )
      .iterate() as Iterable<TemplateRow & { tenant_id: string; external_user_id: string }>;
    for (const row of rows) {
      yield {
        tenantId: row.tenant_id,
        externalUserId: row.external_user_id,
        embedding: this.cipher.open(row.nonce, row.ciphertext, aad(row.user_id, row.version)),
      };
    }
  }

  private insertTemplate(user: User, embedding: Float32Array, ts: string): void {
    const { nonce, ciphertext } = this.cipher.seal(embedding, aad(user.id, user.version));
    this.db
      .prepare(
        'INSERT INTO templates (id, user_id, version, active, nonce, ciphertext, created_at) VALUES (?, ?, ?, 1, ?, ?, ?)',
      )
      .run(crypto.randomUUID(), user.id, user.version, nonce, ciphertext, ts);
  }
}

function aad(userId: string, version: number): string {
  return `template:${userId}:${version}`;
}

function toUser(row: UserRow): User {
  return {
    id: row.id,
    tenantId: row.tenant_id,
    externalUserId: row.external_user_id,
    version: row.version,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}
