import crypto from 'node:crypto';
import type { Statement } from 'better-sqlite3';
import { type EmbeddingCipher, type TemplateBinding, templateAad } from './crypto.ts';
import { type Db, now } from './database.ts';
import { meanEmbedding } from '../biometrics/embedding.ts';
import { type Embeddings, type ModelId, MATCHERS, isModelId } from '../biometrics/matchers/index.ts';
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
  model: ModelId;
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
  /** 0: the enrolment template; 1…: a further capture. */
  capture: number;
  nonce: Buffer;
  ciphertext: Buffer;
}

/**
 * Further captures a person keeps per model beside their enrolment template (a guarded adaptive
 * update, README "Templates from door captures"): the eval measured the mean of two photos
 * halving FNIR at the rule; more would let one person's looks drift further from the enrolment.
 */
export const MAX_CAPTURES = 2;
/** When every slot is taken, a newer capture replaces the oldest only once it is this old (bounded writes, a face that ages). */
export const CAPTURE_REFRESH_MS = 30 * 24 * 3600 * 1000;

/** A change made here (not one replicated from the hub), reported inside its own transaction. */
export interface LocalUserChange {
  tenantId: string;
  externalUserId: string;
  /** `templates`: templates of further models added at the person's version (a migration). */
  kind: 'upsert' | 'delete' | 'templates';
  version: number;
}

/**
 * Enrolled users and their encrypted templates. A user keeps every template version it ever had
 * (only one active); deleting a user erases all of them and leaves a tombstone row under a
 * pseudonym. A template opens only for the tenant, user, version, model and slot it was sealed
 * for, so a row edited in the database is refused, and its user is flagged for re-enrolment.
 * Beside the enrolment template of a model, a person may hold up to MAX_CAPTURES further captures
 * (this device's own: they never replicate); decisions use the normalised mean of them all.
 */
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
    /** The models whose templates are kept and used here; a template of another model is not used. */
    readonly models: readonly ModelId[] = MATCHERS.map((m) => m.id),
  ) {}

  /** The keyed pseudonym a person's tombstone is kept under once they are deleted. */
  pseudonym(tenantId: string, externalUserId: string): string {
    return this.cipher.pseudonym(tenantId, externalUserId);
  }

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
  enroll(tenantId: string, externalUserId: string, templates: Embeddings, version?: number): User {
    const ts = now();
    if (this.get(tenantId, externalUserId)) throw new Error('user already enrolled');
    const user = this.#createOrRevive(tenantId, externalUserId, (tombVersion) => version ?? (tombVersion ?? 0) + 1, ts);
    this.#insertTemplates(user, templates, ts);
    this.changeJournal?.({ tenantId, externalUserId, kind: 'upsert', version: user.version });
    return user;
  }

  /**
   * Templates from the fleet's change log, at the hub's version; returns the person's templates
   * held afterwards. The log's order is the authority (the hub resolved conflicts before
   * sequencing): a newer version replaces whatever this device holds for the person. At the
   * version held here (this door's own enrolment coming back through the log), it replaces the
   * templates of the models it carries and keeps the others: they were made from the same capture.
   */
  replicate(tenantId: string, externalUserId: string, version: number, templates: Embeddings): Embeddings {
    const ts = now();
    const live = this.get(tenantId, externalUserId);
    const user = live ? { ...live, version, updatedAt: ts, needsReenrolment: false } : this.#createOrRevive(tenantId, externalUserId, () => version, ts);
    if (live) this.#sql('UPDATE users SET version = ?, updated_at = ?, reenrolment_reason = NULL WHERE id = ?').run(version, ts, user.id);
    if (live?.version === version) {
      // the captures that joined it here stay: they are of the same person at the same version
      for (const model of Object.keys(templates)) this.#sql('DELETE FROM templates WHERE user_id = ? AND version = ? AND model = ? AND capture = 0').run(user.id, version, model);
    } else {
      this.#retire(user.id);
      this.#sql('DELETE FROM templates WHERE user_id = ? AND version = ?').run(user.id, version);
    }
    this.#insertTemplates(user, templates, ts);
    return this.templates(user);
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

  /** Stores a new active template version (one template per model); earlier versions stay as inactive history. */
  replaceTemplate(user: User, templates: Embeddings): User {
    const ts = now();
    const next = { ...user, version: user.version + 1, updatedAt: ts, needsReenrolment: false };
    this.#retire(user.id);
    this.#sql('UPDATE users SET version = ?, updated_at = ?, reenrolment_reason = NULL WHERE id = ?').run(next.version, ts, user.id);
    this.#insertTemplates(next, templates, ts);
    this.changeJournal?.({ tenantId: user.tenantId, externalUserId: user.externalUserId, kind: 'upsert', version: next.version });
    return next;
  }

  /**
   * Adds the templates of models the person holds no active template of, at their current
   * version (a migration to a newer model: the person did not change, so neither does their
   * version; the fleet gets them as `templates`). Returns the models added.
   */
  addTemplates(user: User, templates: Embeddings): ModelId[] {
    const held = new Set((this.#sql('SELECT model FROM templates WHERE user_id = ? AND active = 1 AND capture = 0').all(user.id) as { model: string }[]).map((r) => r.model));
    const added = (Object.keys(templates) as ModelId[]).filter((m) => !held.has(m) && this.models.includes(m));
    this.#insertTemplates(user, Object.fromEntries(added.map((m) => [m, templates[m]])), now());
    if (added.length > 0) this.changeJournal?.({ tenantId: user.tenantId, externalUserId: user.externalUserId, kind: 'templates', version: user.version });
    return added;
  }

  /**
   * Keeps a door capture of `model` beside the person's enrolment template, at their version (the
   * decision's guard rails passed: sessions/decisions.ts). It takes a free slot, or replaces the
   * oldest capture once that is CAPTURE_REFRESH_MS old; otherwise nothing is written (null). The
   * enrolment template is never replaced. A capture stays on this device: nothing is journalled.
   */
  addCapture(user: User, model: ModelId, embedding: Float32Array, at = new Date()): { slot: number; replaced: boolean } | null {
    if (!this.models.includes(model)) return null;
    const enrolled = this.#sql('SELECT 1 FROM templates WHERE user_id = ? AND active = 1 AND model = ? AND capture = 0').get(user.id, model);
    if (!enrolled) return null;
    const taken = this.#sql('SELECT capture, created_at FROM templates WHERE user_id = ? AND active = 1 AND model = ? AND capture > 0 ORDER BY created_at, capture')
      .all(user.id, model) as { capture: number; created_at: string }[];
    const free = Array.from({ length: MAX_CAPTURES }, (_, i) => i + 1).find((slot) => !taken.some((t) => t.capture === slot));
    const oldest = taken[0];
    const stale = oldest !== undefined && at.getTime() - Date.parse(oldest.created_at) >= CAPTURE_REFRESH_MS;
    const slot = free ?? (stale ? oldest.capture : undefined);
    if (slot === undefined) return null;
    const replaced = free === undefined;
    if (replaced) this.#sql('DELETE FROM templates WHERE user_id = ? AND version = ? AND model = ? AND capture = ?').run(user.id, user.version, model, slot);
    this.#insert(user, model, slot, embedding, at.toISOString());
    return { slot, replaced };
  }

  /**
   * Deletes every template of `model` (active and history) of the tenant's people who hold an
   * active template of another model this store keeps; returns how many people lost one, and how
   * many still have only that model's template (they keep it: retiring it would lock them out).
   */
  retireModel(tenantId: string, model: ModelId): { retired: number; kept: number } {
    const others = this.models.filter((m) => m !== model);
    const marks = others.map(() => '?').join(', ');
    const covered = `EXISTS (SELECT 1 FROM templates o WHERE o.user_id = t.user_id AND o.active = 1 AND o.model IN (${marks || 'NULL'}))`;
    const inTenant = 'user_id IN (SELECT id FROM users WHERE tenant_id = ? AND deleted_at IS NULL)';
    return this.db.transaction(() => {
      const retired = (this.#sql(`SELECT COUNT(DISTINCT t.user_id) AS n FROM templates t WHERE t.model = ? AND t.${inTenant} AND ${covered}`).get(model, tenantId, ...others) as { n: number }).n;
      const kept = (this.#sql(`SELECT COUNT(DISTINCT t.user_id) AS n FROM templates t WHERE t.model = ? AND t.active = 1 AND t.${inTenant} AND NOT ${covered}`).get(model, tenantId, ...others) as { n: number }).n;
      this.#sql(`DELETE FROM templates AS t WHERE t.model = ? AND t.${inTenant} AND ${covered}`).run(model, tenantId, ...others);
      return { retired, kept };
    })();
  }

  /** Per tenant: its live people, and how many of them hold an active template of each model. */
  modelCoverage(): { tenantId: string; people: number; byModel: Partial<Record<ModelId, number>> }[] {
    const people = this.#sql('SELECT tenant_id, COUNT(*) AS n FROM users WHERE deleted_at IS NULL GROUP BY tenant_id').all() as { tenant_id: string; n: number }[];
    const rows = this.#sql(
      `SELECT u.tenant_id, t.model, COUNT(DISTINCT u.id) AS n FROM templates t JOIN users u ON u.id = t.user_id
       WHERE t.active = 1 AND u.deleted_at IS NULL GROUP BY u.tenant_id, t.model`,
    ).all() as { tenant_id: string; model: string; n: number }[];
    return people.map((p) => ({
      tenantId: p.tenant_id,
      people: p.n,
      byModel: Object.fromEntries(rows.filter((r) => r.tenant_id === p.tenant_id && isModelId(r.model)).map((r) => [r.model, r.n])),
    }));
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

  /**
   * The template of each model kept here that decides the user: the normalised mean of their
   * enrolment template and the captures that joined it. When none opens (damaged, edited in the
   * database, or made by a model not kept here) the user is flagged for re-enrolment.
   */
  templates(user: User): Embeddings {
    return this.#opened(user, 'SELECT user_id, version, model, capture, nonce, ciphertext FROM templates WHERE user_id = ? AND active = 1');
  }

  /** The user's enrolment template of each model, without captures: what replicates to the fleet. */
  enrolmentTemplates(user: User): Embeddings {
    return this.#opened(user, 'SELECT user_id, version, model, capture, nonce, ciphertext FROM templates WHERE user_id = ? AND active = 1 AND capture = 0');
  }

  #opened(user: User, query: string): Embeddings {
    const person: OpenedPerson = { opened: [] };
    for (const row of this.#sql(query).all(user.id) as TemplateRow[]) this.#openInto(person, row, user.tenantId, user.externalUserId);
    return this.#combinedOrFlagged(user.id, person);
  }

  #openInto(person: OpenedPerson, row: TemplateRow, tenantId: string, externalUserId: string): void {
    const o = this.#open(row, tenantId, externalUserId);
    if ('reason' in o) person.unusable ??= o.reason;
    else person.opened.push({ model: row.model as ModelId, capture: row.capture, embedding: o.embedding });
  }

  /** The person's templates combined per model; a person left with none of a row that did not open is flagged for re-enrolment. */
  #combinedOrFlagged(userId: string, person: OpenedPerson): Embeddings {
    const out = combined(person.opened);
    if (person.unusable && Object.keys(out).length === 0) this.#flag(userId, person.unusable);
    return out;
  }

  templateVersions(user: User): { version: number; active: boolean; createdAt: string }[] {
    const rows = this.#sql('SELECT version, active, created_at FROM templates WHERE user_id = ? AND capture = 0 ORDER BY version, model')
      .all(user.id) as { version: number; active: number; created_at: string }[];
    return rows.map((r) => ({ version: r.version, active: r.active === 1, createdAt: r.created_at }));
  }

  /**
   * Every usable active template of every tenant, decrypted and combined per person and model
   * (as templates() does), for building the in-memory 1:N index. A template that does not open
   * (damaged, or edited in the database) or was made by a model not kept here is skipped, and a
   * user left with none is flagged for re-enrolment: one bad row never stops the door from
   * serving everyone else.
   */
  activeTemplates(): ActiveTemplate[] {
    const rows = this.#sql(
        `SELECT u.tenant_id, u.external_user_id, t.user_id, t.version, t.model, t.capture, t.nonce, t.ciphertext
         FROM templates t JOIN users u ON u.id = t.user_id
         WHERE t.active = 1 AND u.deleted_at IS NULL`,
      )
      .iterate() as Iterable<TemplateRow & { tenant_id: string; external_user_id: string }>;
    const people = new Map<string, OpenedPerson & { tenantId: string; externalUserId: string }>();
    for (const row of rows) {
      let person = people.get(row.user_id);
      if (!person) people.set(row.user_id, (person = { tenantId: row.tenant_id, externalUserId: row.external_user_id, opened: [] }));
      this.#openInto(person, row, row.tenant_id, row.external_user_id);
    }
    // combined (and flagged) once the rows are read: the connection is busy while they are iterated
    const usable: ActiveTemplate[] = [];
    for (const [userId, person] of people) {
      for (const [model, embedding] of Object.entries(this.#combinedOrFlagged(userId, person))) {
        usable.push({ tenantId: person.tenantId, externalUserId: person.externalUserId, model: model as ModelId, embedding });
      }
    }
    return usable;
  }

  #open(row: TemplateRow, tenantId: string, externalUserId: string): { embedding: Float32Array } | { reason: ReenrolmentReason } {
    if (!(this.models as readonly string[]).includes(row.model)) return { reason: 'model_changed' };
    try {
      return { embedding: this.cipher.open(row.nonce, row.ciphertext, templateAad({ tenantId, externalUserId, version: row.version, model: row.model, capture: row.capture })) };
    } catch {
      return { reason: 'template_unreadable' };
    }
  }

  /** The user's templates stop deciding (a new version): enrolment templates stay as history, captures are erased. */
  #retire(userId: string): void {
    this.#sql('DELETE FROM templates WHERE user_id = ? AND active = 1 AND capture > 0').run(userId);
    this.#sql('UPDATE templates SET active = 0 WHERE user_id = ? AND active = 1').run(userId);
  }

  #flag(userId: string, reason: ReenrolmentReason): void {
    this.#sql('UPDATE users SET reenrolment_reason = ? WHERE id = ?').run(reason, userId);
  }

  /** One active enrolment template per model kept here, sealed for the user at their version. */
  #insertTemplates(user: User, templates: Embeddings, ts: string): void {
    for (const model of this.models) {
      const embedding = templates[model];
      if (embedding) this.#insert(user, model, 0, embedding, ts);
    }
  }

  #insert(user: User, model: ModelId, capture: number, embedding: Float32Array, ts: string): void {
    const binding: TemplateBinding = { tenantId: user.tenantId, externalUserId: user.externalUserId, version: user.version, model, capture };
    const { nonce, ciphertext } = this.cipher.seal(embedding, templateAad(binding));
    this.#sql('INSERT INTO templates (id, user_id, version, active, model, capture, nonce, ciphertext, created_at) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)')
      .run(crypto.randomUUID(), user.id, user.version, model, capture, nonce, ciphertext, ts);
  }
}

interface Opened {
  model: ModelId;
  capture: number;
  embedding: Float32Array;
}

/** A person's rows as they opened: the templates, and why one did not (if any did not). */
interface OpenedPerson {
  opened: Opened[];
  unusable?: ReenrolmentReason;
}

/**
 * Per model, the normalised mean of a person's opened templates (the enrolment one alone, when it
 * has no captures). Captures never decide without the enrolment template they joined.
 */
function combined(opened: readonly Opened[]): Embeddings {
  const out: Embeddings = {};
  for (const model of new Set(opened.filter((o) => o.capture === 0).map((o) => o.model))) {
    const of = opened.filter((o) => o.model === model).map((o) => o.embedding);
    out[model] = of.length === 1 ? of[0] : meanEmbedding(of);
  }
  return out;
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

