import crypto from 'node:crypto';
import type { Statement } from 'better-sqlite3';
import { type EmbeddingCipher, type TemplateBinding, templateAad } from './crypto.ts';
import { type Db, now } from './database.ts';
import { userSetDigest } from '../sync/digest.ts';

export interface User {
  id: string;
  tenantId: string;
  externalUserId: string;
  version: number;
  createdAt: string;
  updatedAt: string;
  /** The stored template cannot be used (unreadable, or made by another model): enrol again. */
  needsReenrolment: boolean;
}

export interface ActiveTemplate {
  tenantId: string;
  externalUserId: string;
  embedding: Float32Array;
}

/** Why a user must enrol again. */
export type ReenrolmentReason = 'template_unreadable' | 'model_changed';

interface UserRow {
  id: string;
  tenant_id: string;
  external_user_id: string;
  version: number;
  created_at: string;
  updated_at: string;
  deleted_at: string | null;
  reenrolment_reason: ReenrolmentReason | null;
}

interface TemplateRow {
  user_id: string;
  version: number;
  model: string;
  nonce: Buffer;
  ciphertext: Buffer;
}

/**
 * Enrolled users and their encrypted templates. A user keeps every template version it ever had
 * (only one active); deleting a user erases all of them and leaves a tombstone row under a
 * pseudonym. A template opens only for the tenant, user, version and model it was sealed for, so
 * a row edited in the database is refused, and its user is flagged for re-enrolment.
 */
/** A change made here (not one replicated from the hub), reported inside its own transaction. */
export interface LocalUserChange {
  tenantId: string;
  externalUserId: string;
  kind: 'upsert' | 'delete';
  version: number;
}

export class UserStore {
  /**
   * Called inside the transaction of every enrolment, template update and deletion made on this
   * device, so that whatever must follow it (the fleet outbox) commits with it or not at all.
   */
  changeJournal: ((change: LocalUserChange) => void) | null = null;
  /** Prepared once: replication writes thousands of users in a row (a snapshot). */
  readonly #statements = new Map<string, Statement>();

  constructor(
    private readonly db: Db,
    private readonly cipher: EmbeddingCipher,
    /** The embedding model the engine runs; templates of another model are not used. */
    private readonly model: string,
  ) {}

  #sql(text: string): Statement {
    let statement = this.#statements.get(text);
    if (!statement) {
      statement = this.db.prepare(text);
      this.#statements.set(text, statement);
    }
    return statement;
  }

  /** The live (not deleted) user, if any. */
  get(tenantId: string, externalUserId: string): User | undefined {
    const row = this.#sql('SELECT * FROM users WHERE tenant_id = ? AND external_user_id = ? AND deleted_at IS NULL')
      .get(tenantId, externalUserId) as UserRow | undefined;
    return row && toUser(row);
  }

  list(tenantId: string, limit: number, offset: number): { total: number; users: User[] } {
    const total = (
      this.#sql('SELECT COUNT(*) AS n FROM users WHERE tenant_id = ? AND deleted_at IS NULL').get(tenantId) as {
        n: number;
      }
    ).n;
    const rows = this.#sql(
        `SELECT * FROM users WHERE tenant_id = ? AND deleted_at IS NULL
         ORDER BY created_at, external_user_id LIMIT ? OFFSET ?`,
      )
      .all(tenantId, limit, offset) as UserRow[];
    return { total, users: rows.map(toUser) };
  }

  /** Users who must enrol again, with why (all tenants). */
  needingReenrolment(): { tenantId: string; externalUserId: string; reason: ReenrolmentReason }[] {
    const rows = this.#sql('SELECT tenant_id, external_user_id, reenrolment_reason FROM users WHERE reenrolment_reason IS NOT NULL AND deleted_at IS NULL ORDER BY tenant_id, external_user_id')
      .all() as { tenant_id: string; external_user_id: string; reenrolment_reason: ReenrolmentReason }[];
    return rows.map((r) => ({ tenantId: r.tenant_id, externalUserId: r.external_user_id, reason: r.reenrolment_reason }));
  }

  /**
   * Creates the user (or revives its tombstone with the next version) with its first template;
   * `version`: the one the fleet's hub sequenced this enrolment at.
   */
  enroll(tenantId: string, externalUserId: string, embedding: Float32Array, version?: number): User {
    const ts = now();
    if (this.get(tenantId, externalUserId)) throw new Error('user already enrolled');
    const user = this.#createOrRevive(tenantId, externalUserId, (tombVersion) => version ?? (tombVersion ?? 0) + 1, ts);
    this.insertTemplate(user, embedding, ts);
    this.changeJournal?.({ tenantId, externalUserId, kind: 'upsert', version: user.version });
    return user;
  }

  /**
   * A template from the fleet's change log, at the hub's version. The log's order is the
   * authority (the hub resolved conflicts before sequencing), so it replaces whatever this device
   * holds for the person, including a local copy of the same version.
   */
  replicate(tenantId: string, externalUserId: string, version: number, embedding: Float32Array): void {
    const ts = now();
    const live = this.get(tenantId, externalUserId);
    const user = live ? { ...live, version, updatedAt: ts, needsReenrolment: false } : this.#createOrRevive(tenantId, externalUserId, () => version, ts);
    if (live) this.#sql('UPDATE users SET version = ?, updated_at = ?, reenrolment_reason = NULL WHERE id = ?').run(version, ts, user.id);
    this.#sql('UPDATE templates SET active = 0 WHERE user_id = ? AND active = 1').run(user.id);
    this.#sql('DELETE FROM templates WHERE user_id = ? AND version = ?').run(user.id, version);
    this.insertTemplate(user, embedding, ts);
  }

  /** A new user row, or the person's tombstone brought back (kept under the pseudonym, older ones under the id). */
  #createOrRevive(tenantId: string, externalUserId: string, versionAfter: (tombVersion: number | undefined) => number, ts: string): User {
    const tomb = this.#sql('SELECT * FROM users WHERE tenant_id = ? AND external_user_id IN (?, ?) AND deleted_at IS NOT NULL')
      .get(tenantId, this.cipher.pseudonym(tenantId, externalUserId), externalUserId) as UserRow | undefined;
    if (tomb) {
      const user = { ...toUser(tomb), externalUserId, version: versionAfter(tomb.version), createdAt: ts, updatedAt: ts, needsReenrolment: false };
      this.#sql('UPDATE users SET external_user_id = ?, version = ?, created_at = ?, updated_at = ?, deleted_at = NULL, reenrolment_reason = NULL WHERE id = ?')
        .run(externalUserId, user.version, ts, ts, user.id);
      return user;
    }
    const user = { id: crypto.randomUUID(), tenantId, externalUserId, version: versionAfter(undefined), createdAt: ts, updatedAt: ts, needsReenrolment: false };
    this.#sql('INSERT INTO users (id, tenant_id, external_user_id, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)').run(user.id, tenantId, externalUserId, user.version, ts, ts);
    return user;
  }

  /**
   * The digest of a tenant's live users, their versions and their groups (sync/digest.ts): two
   * copies of the tenant agree exactly when their digests do (the hub compares it with its own).
   */
  digest(tenantId: string): { digest: string; users: number } {
    const rows = this.#sql(
      `SELECT u.external_user_id, u.version, (SELECT json_group_array(g.group_name) FROM group_members g WHERE g.tenant_id = u.tenant_id AND g.external_user_id = u.external_user_id) AS groups
       FROM users u WHERE u.tenant_id = ? AND u.deleted_at IS NULL`,
    ).all(tenantId) as { external_user_id: string; version: number; groups: string }[];
    return { digest: userSetDigest(rows.map((r) => [r.external_user_id, r.version, JSON.parse(r.groups) as string[]])), users: rows.length };
  }

  /** Flags a live user whose fleet template this device cannot use (made by a model it does not run). */
  flagReenrolment(tenantId: string, externalUserId: string, reason: ReenrolmentReason): void {
    this.#sql('UPDATE users SET reenrolment_reason = ? WHERE tenant_id = ? AND external_user_id = ? AND deleted_at IS NULL').run(reason, tenantId, externalUserId);
  }

  /** Stores a new active template version; earlier versions stay as inactive history. */
  replaceTemplate(user: User, embedding: Float32Array): User {
    const ts = now();
    const next = { ...user, version: user.version + 1, updatedAt: ts, needsReenrolment: false };
    this.#sql('UPDATE templates SET active = 0 WHERE user_id = ? AND active = 1').run(user.id);
    this.#sql('UPDATE users SET version = ?, updated_at = ?, reenrolment_reason = NULL WHERE id = ?').run(next.version, ts, user.id);
    this.insertTemplate(next, embedding, ts);
    this.changeJournal?.({ tenantId: user.tenantId, externalUserId: user.externalUserId, kind: 'upsert', version: next.version });
    return next;
  }

  /**
   * Erases every template of the user and leaves a tombstone under a keyed pseudonym; returns the
   * pseudonym, or null when there is no such user. Rows elsewhere that name the person are the
   * caller's to erase in the same transaction (Store.eraseUser).
   */
  delete(tenantId: string, externalUserId: string): string | null {
    const user = this.get(tenantId, externalUserId);
    if (!user) return null;
    const ts = now();
    const pseudonym = this.cipher.pseudonym(tenantId, externalUserId);
    this.#sql('DELETE FROM templates WHERE user_id = ?').run(user.id);
    this.#sql('UPDATE users SET external_user_id = ?, version = version + 1, updated_at = ?, deleted_at = ?, reenrolment_reason = NULL WHERE id = ?')
      .run(pseudonym, ts, ts, user.id);
    this.changeJournal?.({ tenantId, externalUserId, kind: 'delete', version: user.version + 1 });
    return pseudonym;
  }

  /** The user's active template, or undefined; an unreadable one flags the user for re-enrolment. */
  activeEmbedding(user: User): Float32Array | undefined {
    const row = this.#sql('SELECT user_id, version, model, nonce, ciphertext FROM templates WHERE user_id = ? AND active = 1')
      .get(user.id) as TemplateRow | undefined;
    if (!row) return undefined;
    const opened = this.#open(row, user.tenantId, user.externalUserId);
    if ('reason' in opened) {
      this.#flag(user.id, opened.reason);
      return undefined;
    }
    return opened.embedding;
  }

  templateVersions(user: User): { version: number; active: boolean; createdAt: string }[] {
    const rows = this.#sql('SELECT version, active, created_at FROM templates WHERE user_id = ? ORDER BY version')
      .all(user.id) as { version: number; active: number; created_at: string }[];
    return rows.map((r) => ({ version: r.version, active: r.active === 1, createdAt: r.created_at }));
  }

  /**
   * Every usable active template of every tenant, decrypted, for building the in-memory 1:N
   * index. A template that does not open (damaged, or edited in the database) or was made by
   * another model is skipped, and its user is flagged for re-enrolment: one bad row never stops
   * the door from serving everyone else.
   */
  activeTemplates(): ActiveTemplate[] {
    const rows = this.#sql(
        `SELECT u.tenant_id, u.external_user_id, t.user_id, t.version, t.model, t.nonce, t.ciphertext
         FROM templates t JOIN users u ON u.id = t.user_id
         WHERE t.active = 1 AND u.deleted_at IS NULL`,
      )
      .iterate() as Iterable<TemplateRow & { tenant_id: string; external_user_id: string }>;
    const usable: ActiveTemplate[] = [];
    const unusable: { userId: string; reason: ReenrolmentReason }[] = [];
    for (const row of rows) {
      const opened = this.#open(row, row.tenant_id, row.external_user_id);
      if ('reason' in opened) {
        unusable.push({ userId: row.user_id, reason: opened.reason });
      } else {
        usable.push({ tenantId: row.tenant_id, externalUserId: row.external_user_id, embedding: opened.embedding });
      }
    }
    for (const u of unusable) this.#flag(u.userId, u.reason);
    return usable;
  }

  #open(row: TemplateRow, tenantId: string, externalUserId: string): { embedding: Float32Array } | { reason: ReenrolmentReason } {
    if (row.model !== this.model) return { reason: 'model_changed' };
    try {
      return { embedding: this.cipher.open(row.nonce, row.ciphertext, templateAad({ tenantId, externalUserId, version: row.version, model: row.model })) };
    } catch {
      return { reason: 'template_unreadable' };
    }
  }

  #flag(userId: string, reason: ReenrolmentReason): void {
    this.#sql('UPDATE users SET reenrolment_reason = ? WHERE id = ?').run(reason, userId);
  }

  private insertTemplate(user: User, embedding: Float32Array, ts: string): void {
    const binding: TemplateBinding = { tenantId: user.tenantId, externalUserId: user.externalUserId, version: user.version, model: this.model };
    const { nonce, ciphertext } = this.cipher.seal(embedding, templateAad(binding));
    this.#sql(
        'INSERT INTO templates (id, user_id, version, active, model, nonce, ciphertext, created_at) VALUES (?, ?, ?, 1, ?, ?, ?, ?)',
      )
      .run(crypto.randomUUID(), user.id, user.version, this.model, nonce, ciphertext, ts);
  }
}

function toUser(row: UserRow): User {
  return {
    id: row.id,
    tenantId: row.tenant_id,
    externalUserId: row.external_user_id,
    version: row.version,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    needsReenrolment: row.reenrolment_reason !== null,
  };
}

