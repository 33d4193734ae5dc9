import type { GalleryIndex } from '../biometrics/gallery.ts';
import { type Embeddings, type ModelId, isModelId } from '../biometrics/matchers/index.ts';
import type { Store } from '../store/index.ts';
import { EnvelopeError, isAuthentic, openTemplate } from './envelope.ts';
import type { TenantKeyring } from './keyring.ts';
import { type Change, type SnapshotUser, type SyncReply, type TenantSettings, CHANGE_FIELDS_OUTSIDE_AUTH } from './protocol.ts';

type SnapshotChunk = Extract<SyncReply, { type: 'snapshot' }>;

/** A snapshot being loaded: the hub's head when it began (null before the first chunk) and the last user applied. */
export interface SnapshotProgress {
  snapshotSeq: number | null;
  afterUser: string | null;
}

export interface ApplyResult {
  /** Changes applied now, in order. */
  applied: number;
  /** Changes at or below the cursor: already applied (a duplicate or a replay), ignored. */
  duplicates: number;
  /** The first missing range, when the batch skips ahead: fetch it from the hub, then apply again. */
  gap: { from: number; to: number } | null;
  /** A change that was refused (its envelope does not open): nothing from it on is applied. */
  refused: { seq: number; reason: string } | null;
  /** The cursor after the batch. */
  cursor: number;
}

/**
 * A device's copy of its tenant's fleet log. Changes are applied strictly in sequence order, and
 * the cursor moves in the same SQLite transaction as the data it covers: after a crash the cursor
 * and the users always agree (a cursor that says "in sync" while users are missing cannot happen).
 * The in-memory 1:N index is updated only after the commit.
 */
export class Replica {
  constructor(
    private readonly store: Pick<Store, 'db' | 'users' | 'eraseUser' | 'audit' | 'tenants' | 'groups'>,
    private readonly index: GalleryIndex,
    /** The tenant's key versions this device holds (unwrapped with its key pair), or undefined for a tenant it does not sync. */
    private readonly keyring: (tenantId: string) => TenantKeyring | undefined,
    /** The model whose templates replicate (sync/fleet-model.ts). */
    private readonly model: ModelId,
  ) {}

  /**
   * The key a reply of the hub (an ack, a snapshot chunk) must be authenticated with: the newest
   * version held. A device revoked by a rotation has only older ones, so it cannot forge a reply.
   */
  replyKey(tenantId: string): (keyVersion: number) => Buffer | undefined {
    const latest = this.keyring(tenantId)?.latest;
    return (keyVersion) => (latest && keyVersion === latest.keyVersion ? latest.key : undefined);
  }

  cursor(tenantId: string): number {
    const row = this.store.db.prepare('SELECT applied_seq FROM sync_cursors WHERE tenant_id = ?').get(tenantId) as { applied_seq: number } | undefined;
    return row?.applied_seq ?? 0;
  }

  /** Applies what follows the cursor; the batch may be out of order, duplicated or start ahead. */
  apply(tenantId: string, changes: readonly Change[]): ApplyResult {
    const ordered = changes.filter((c) => c.tenant_id === tenantId).sort((a, b) => a.seq - b.seq);
    return this.#asReplica(
      (after) => this.#applyAll(tenantId, ordered, after),
      (result) => ordered.some((c) => c.kind === 'user.delete') && result.applied > 0,
    );
  }

  /**
   * Runs `work` as the hub's copy: nothing it changes goes back to the hub (the outbox journal is
   * off), the index is updated after it (`after`, once it committed), and an erased person's id,
   * still in the WAL's old page images, is checkpointed away when `erased` says so.
   */
  #asReplica<T>(work: (after: (() => void)[]) => T, erased: (result: T) => boolean): T {
    const after: (() => void)[] = [];
    const journal = this.store.users.changeJournal;
    this.store.users.changeJournal = null;
    let result: T;
    try {
      result = work(after);
    } finally {
      this.store.users.changeJournal = journal;
    }
    for (const run of after) run();
    if (erased(result)) this.store.db.pragma('wal_checkpoint(TRUNCATE)');
    return result;
  }

  #applyAll(tenantId: string, ordered: readonly Change[], after: (() => void)[]): ApplyResult {
    return this.store.db.transaction((): ApplyResult => {
      let cursor = this.cursor(tenantId);
      let applied = 0;
      let duplicates = 0;
      for (const change of ordered) {
        if (change.seq <= cursor) {
          duplicates++;
          continue;
        }
        if (change.seq > cursor + 1) return { applied, duplicates, gap: { from: cursor + 1, to: change.seq - 1 }, refused: null, cursor: this.#moveTo(tenantId, cursor) };
        const refusal = this.#applyOne(change, after);
        if (refusal) return { applied, duplicates, gap: null, refused: { seq: change.seq, reason: refusal }, cursor: this.#moveTo(tenantId, cursor) };
        cursor = change.seq;
        applied++;
      }
      return { applied, duplicates, gap: null, refused: null, cursor: this.#moveTo(tenantId, cursor) };
    })();
  }

  /** One change inside the batch's transaction; returns why it was refused, or null. */
  #applyOne(change: Change, after: (() => void)[]): string | null {
    // only the hub, which holds the tenant key, makes a change: a forged one stops here, and the
    // real change of that number is applied when it comes
    const ring = this.keyring(change.tenant_id);
    // a version this device does not hold yet: the hub's notice of it is on its way (or asked for)
    if (ring && change.auth && change.auth.key_version > ring.latest.keyVersion) return 'unknown_key';
    if (!ring || !isAuthentic((v) => ring.changeKey(change.seq, v), 'change', change.tenant_id, change, CHANGE_FIELDS_OUTSIDE_AUTH)) return 'unauthenticated';
    const gallery = this.index.of(change.tenant_id);
    switch (change.kind) {
      // a change blanked by a later deletion: only its place in the order is left
      case 'user.erased':
        return null;
      case 'user.delete':
        this.store.eraseUser(change.tenant_id, change.external_user_id, () => null);
        after.push(() => gallery.remove(change.external_user_id));
        return null;
      case 'user.groups':
        this.store.groups.set(change.tenant_id, change.external_user_id, change.groups);
        return null;
      case 'tenant.settings':
        this.#applyTenant(change.tenant_id, change);
        return null;
      case 'user.upsert':
        return this.#applyTemplate(change.tenant_id, change, after);
    }
  }

  /** A person's template from the hub (an upsert of the log, or a user of a snapshot); returns why it was refused, or null. */
  #applyTemplate(tenantId: string, u: SnapshotUser, after: (() => void)[]): string | null {
    const gallery = this.index.of(tenantId);
    const key = this.keyring(tenantId)?.key(u.key_version);
    if (!key) return `no tenant key of version ${u.key_version} on this device`;
    const binding = { tenantId, externalUserId: u.external_user_id, version: u.version, model: u.model, keyVersion: u.key_version };
    try {
      const embedding = openTemplate(key, u.template, binding, this.model);
      const held = this.store.users.replicate(tenantId, u.external_user_id, u.version, { ...this.#further(tenantId, u), [this.model]: embedding });
      after.push(() => gallery.upsert(u.external_user_id, held));
      return null;
    } catch (err) {
      if (!(err instanceof EnvelopeError)) throw err;
      if (err.code !== 'wrong_model') return err.code;
      // the log moves on; this person cannot be recognised here until they enrol with this model
      this.store.users.flagReenrolment(tenantId, u.external_user_id, 'model_changed');
      after.push(() => gallery.remove(u.external_user_id));
      return null;
    }
  }

  /**
   * The person's templates of further models kept here. One that does not open is left out (the
   * person is decided by the fleet model's, and this door makes its own at their next capture): it
   * travels outside the change's MAC, so a broker client could have swapped it for garbage.
   */
  #further(tenantId: string, u: SnapshotUser): Embeddings {
    const out: Embeddings = {};
    for (const t of u.templates ?? []) {
      const key = this.keyring(tenantId)?.key(t.key_version);
      if (!key || !isModelId(t.model) || t.model === this.model || !this.store.users.models.includes(t.model)) continue;
      try {
        out[t.model] = openTemplate(key, t.template, { tenantId, externalUserId: u.external_user_id, version: u.version, model: t.model, keyVersion: t.key_version }, t.model);
      } catch (err) {
        if (!(err instanceof EnvelopeError)) throw err;
      }
    }
    return out;
  }

  #applyTenant(tenantId: string, t: Omit<TenantSettings, 'kind'>): void {
    this.store.tenants.update(tenantId, { name: t.name, allowedOrigins: t.allowed_origins, livenessMode: t.liveness_mode });
  }

  /** The snapshot of the tenant being loaded here, if any (it survives a restart). */
  snapshot(tenantId: string): SnapshotProgress | undefined {
    const row = this.store.db.prepare('SELECT snapshot_seq, after_user FROM sync_snapshots WHERE tenant_id = ?').get(tenantId) as
      | { snapshot_seq: number | null; after_user: string | null }
      | undefined;
    return row && { snapshotSeq: row.snapshot_seq, afterUser: row.after_user };
  }

  beginSnapshot(tenantId: string): void {
    this.store.db.prepare('INSERT INTO sync_snapshots (tenant_id, snapshot_seq, after_user, started_at) VALUES (?, NULL, NULL, ?) ON CONFLICT (tenant_id) DO NOTHING').run(tenantId, new Date().toISOString());
  }

  /**
   * Applies one chunk of a snapshot in one transaction: its users are written (at the hub's
   * version), and users held here in the chunk's range that the hub does not have are erased,
   * except those with a change of this device still on its way to the hub. The progress moves in
   * the same transaction; after the last chunk the cursor is set to the snapshot's sequence, and
   * the log after it follows. A chunk that does not answer the current request is ignored.
   */
  applySnapshotChunk(tenantId: string, chunk: SnapshotChunk): { applied: number; removed: number; done: boolean; ignored: boolean } {
    // a chunk need not reach the disk before the next: after a power cut the snapshot resumes from
    // the last chunk that did (WAL keeps data and progress together), and nothing here is acknowledged
    this.store.db.pragma('synchronous = NORMAL');
    try {
      return this.#asReplica(
        (after) => this.store.db.transaction(() => this.#applyChunk(tenantId, chunk, after))(),
        (result) => result.removed > 0,
      );
    } finally {
      this.store.db.pragma('synchronous = FULL');
    }
  }

  #applyChunk(tenantId: string, chunk: SnapshotChunk, after: (() => void)[]): { applied: number; removed: number; done: boolean; ignored: boolean } {
    const progress = this.snapshot(tenantId);
    if (!progress || chunk.tenant_id !== tenantId || chunk.after !== progress.afterUser) return { applied: 0, removed: 0, done: false, ignored: true };
    // a chunk says who exists: a forged one could erase people (DeviceSync checks replies; this is the last line)
    if (!isAuthentic(this.replyKey(tenantId), 'reply', tenantId, chunk)) return { applied: 0, removed: 0, done: false, ignored: true };
    const pending = new Set(
      (this.store.db.prepare('SELECT DISTINCT external_user_id FROM sync_outbox WHERE tenant_id = ?').all(tenantId) as { external_user_id: string }[]).map((r) => r.external_user_id),
    );
    const gallery = this.index.of(tenantId);
    if (chunk.tenant) this.#applyTenant(tenantId, chunk.tenant);
    let applied = 0;
    for (const u of chunk.users) {
      this.store.groups.set(tenantId, u.external_user_id, u.groups ?? []);
      if (pending.has(u.external_user_id)) continue;
      if (this.#holds(tenantId, u)) continue;
      const refusal = this.#applyTemplate(tenantId, u, after);
      if (refusal) throw new Error(`snapshot: the template of a user does not open (${refusal})`);
      applied++;
    }
    const last = chunk.next === null ? null : chunk.users[chunk.users.length - 1].external_user_id;
    const kept = new Set(chunk.users.map((u) => u.external_user_id));
    // ids are never empty: '' is before the first (the conditions stay an index range)
    const held = (
      last === null
        ? this.store.db.prepare('SELECT external_user_id FROM users WHERE tenant_id = ? AND external_user_id > ? AND deleted_at IS NULL').all(tenantId, progress.afterUser ?? '')
        : this.store.db
            .prepare('SELECT external_user_id FROM users WHERE tenant_id = ? AND external_user_id > ? AND external_user_id <= ? AND deleted_at IS NULL')
            .all(tenantId, progress.afterUser ?? '', last)
    ) as { external_user_id: string }[];
    let removed = 0;
    for (const { external_user_id: id } of held) {
      if (kept.has(id) || pending.has(id)) continue;
      this.store.eraseUser(tenantId, id, () => null);
      after.push(() => gallery.remove(id));
      removed++;
    }
    const seq = progress.snapshotSeq ?? chunk.seq;
    if (chunk.next === null) {
      this.#moveTo(tenantId, seq);
      this.store.db.prepare('DELETE FROM sync_snapshots WHERE tenant_id = ?').run(tenantId);
    } else {
      this.store.db.prepare('UPDATE sync_snapshots SET snapshot_seq = ?, after_user = ? WHERE tenant_id = ?').run(seq, chunk.next, tenantId);
    }
    return { applied, removed, done: chunk.next === null, ignored: false };
  }

  /** Whether this device holds the person at the chunk's version with every template of it that it keeps. */
  #holds(tenantId: string, u: SnapshotUser): boolean {
    const user = this.store.users.get(tenantId, u.external_user_id);
    if (user?.version !== u.version) return false;
    const kept = (u.templates ?? []).filter((t) => isModelId(t.model) && this.store.users.models.includes(t.model));
    if (kept.length === 0) return true;
    const held = this.store.users.enrolmentTemplates(user);
    return kept.every((t) => held[t.model as ModelId]);
  }

  #moveTo(tenantId: string, seq: number): number {
    this.store.db
      .prepare('INSERT INTO sync_cursors (tenant_id, applied_seq, updated_at) VALUES (?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET applied_seq = excluded.applied_seq, updated_at = excluded.updated_at')
      .run(tenantId, seq, new Date().toISOString());
    return seq;
  }
}
