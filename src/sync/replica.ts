import crypto from 'node:crypto';
import type { GalleryIndex } from '../biometrics/gallery.ts';
import { type Embeddings, type ModelId, isModelId } from '../biometrics/matchers/index.ts';
import type { Store } from '../store/index.ts';
import { EnvelopeError, isAuthentic, openTemplate } from './envelope.ts';
import type { TenantKeyring } from './keyring.ts';
import { type FleetPin, openFleetPin } from './pin-envelope.ts';
import type { PinVerifier } from '../store/pins.ts';
import { type Change, type SnapshotUser, type SyncReply, type TenantSettings, CHANGE_FIELDS_OUTSIDE_AUTH } from './protocol.ts';

type SnapshotChunk = Extract<SyncReply, { type: 'snapshot' }>;

/** A person the hub holds whom this device had deleted at a later version: the hub's log lost the deletion. */
interface LostDeletion {
  externalUserId: string;
  version: number;
}

/** A snapshot being loaded: the hub's head when it began (null before the first chunk) and the last user staged. */
export interface SnapshotProgress {
  snapshotSeq: number | null;
  afterUser: string | null;
  /** The last chunk is staged: the snapshot is ready to be made this device's copy (Replica.commitSnapshot). */
  complete: boolean;
  /** The epoch of the hub's log its chunks were read in (a chunk of another is not staged with them). */
  epoch: string | null;
}

/** Where this device is in the hub's log: the last change applied, its change_id (null after a snapshot of an earlier release), and the log's epoch. */
export interface LogPosition {
  seq: number;
  changeId: string | null;
  epoch: string | null;
}

/** Erasures are remembered this long: a failover that lost one is noticed within seconds. */
const ERASURES_KEPT_MS = 30 * 24 * 3600_000;

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
  /** The batch reached the head a snapshot announced: whether its digest matched (Replica.checkSnapshot). */
  snapshot?: 'matched' | 'differs' | 'unchecked';
  /** The batch holds another change at the cursor's number than this device applied there: the log was rewound. */
  forked?: true;
}

/**
 * A device's copy of its tenant's fleet log. Changes are applied strictly in sequence order, and
 * the cursor moves in the same SQLite transaction as the data it covers: after a crash the cursor
 * and the users always agree (a cursor that says "in sync" while users are missing cannot happen).
 * The in-memory 1:N index is updated only after the commit.
 */
export class Replica {
  /** The index updates of a snapshot commit in progress (Replica.commitSnapshot), run after its last write. */
  #committing: (() => void)[] | null = null;

  constructor(
    private readonly store: Pick<Store, 'db' | 'users' | 'eraseUser' | 'audit' | 'tenants' | 'groups' | 'pins'>,
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
    return this.position(tenantId).seq;
  }

  position(tenantId: string): LogPosition {
    const row = this.store.db.prepare('SELECT applied_seq, change_id, epoch FROM sync_cursors WHERE tenant_id = ?').get(tenantId) as { applied_seq: number; change_id: string | null; epoch: string | null } | undefined;
    return { seq: row?.applied_seq ?? 0, changeId: row?.change_id ?? null, epoch: row?.epoch ?? null };
  }

  /** The hub confirmed this device's place in its log in `epoch` (its last change is the log's there). */
  adoptEpoch(tenantId: string, epoch: string): void {
    this.store.db.prepare('UPDATE sync_cursors SET epoch = ? WHERE tenant_id = ?').run(epoch, tenantId);
  }

  /**
   * After a rewound log, this device holds exactly the hub's people at `head` (their digests are
   * the same): it takes that head as its place, in the log's epoch, and follows the log from it.
   */
  takeHead(tenantId: string, head: number, changeId: string | null, epoch: string | null): void {
    this.#moveTo(tenantId, head, changeId, epoch);
  }

  /**
   * Remembers a deletion applied here (from the log at `seq`, or made here), under the tombstone's
   * keyed pseudonym: a snapshot of a log that lost it must not bring the person back (#commitSlices).
   */
  recordErasure(tenantId: string, externalUserId: string, version: number, seq: number | null = null): void {
    this.store.db
      .prepare(
        `INSERT INTO sync_erasures (tenant_id, pseudonym, version, seq, epoch, erased_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (tenant_id, pseudonym) DO UPDATE SET version = MAX(version, excluded.version), seq = excluded.seq, epoch = excluded.epoch, erased_at = excluded.erased_at`,
      )
      .run(tenantId, this.store.users.pseudonym(tenantId, externalUserId), version, seq, this.position(tenantId).epoch, new Date().toISOString());
  }

  /** Applies what follows the cursor; the batch may be out of order, duplicated or start ahead. */
  apply(tenantId: string, changes: readonly Change[]): ApplyResult {
    const ordered = changes.filter((c) => c.tenant_id === tenantId).sort((a, b) => a.seq - b.seq);
    const run = (part: readonly Change[]) =>
      this.#asReplica(
        (after) => this.#applyAll(tenantId, part, after),
        (result) => part.some((c) => c.kind === 'user.delete') && result.applied > 0,
      );
    // a snapshot's announced head inside the batch: stop there, and check its digest
    const head = this.#snapshotCheck(tenantId)?.head;
    if (head === undefined || !ordered.some((c) => c.seq > head)) {
      const result = run(ordered);
      return head === undefined ? result : { ...result, snapshot: this.checkSnapshot(tenantId) };
    }
    const first = run(ordered.filter((c) => c.seq <= head));
    const snapshot = this.checkSnapshot(tenantId);
    if (first.cursor < head || first.refused || snapshot === 'differs') return { ...first, snapshot };
    const rest = run(ordered.filter((c) => c.seq > head));
    return { ...rest, applied: first.applied + rest.applied, duplicates: first.duplicates + rest.duplicates, snapshot };
  }

  #snapshotCheck(tenantId: string): { head: number; digest: string } | undefined {
    const row = this.store.db.prepare('SELECT head_seq, digest FROM sync_snapshot_checks WHERE tenant_id = ?').get(tenantId) as { head_seq: number; digest: string } | undefined;
    return row && { head: row.head_seq, digest: row.digest };
  }

  /**
   * Once the cursor is at the head the hub announced with a snapshot's last chunk, this device
   * must hold exactly the people the hub held there (their digest): `differs` says it does not
   * (the snapshot is loaded again). `unchecked`: changes made here and not yet acknowledged make
   * the digests differ anyway (the hub compares them when it has them), or the cursor passed it.
   * Undefined: nothing to check yet.
   */
  checkSnapshot(tenantId: string): 'matched' | 'differs' | 'unchecked' | undefined {
    const check = this.#snapshotCheck(tenantId);
    const cursor = this.cursor(tenantId);
    if (!check || cursor < check.head) return undefined;
    this.store.db.prepare('DELETE FROM sync_snapshot_checks WHERE tenant_id = ?').run(tenantId);
    const pending = this.store.db.prepare('SELECT 1 FROM sync_outbox WHERE tenant_id = ? LIMIT 1').get(tenantId) !== undefined;
    if (pending || cursor > check.head) return 'unchecked';
    return this.store.users.digest(tenantId).digest === check.digest ? 'matched' : 'differs';
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
      const held = this.position(tenantId);
      let cursor = held.seq;
      let changeId = held.changeId;
      let applied = 0;
      let duplicates = 0;
      const done = (rest: Pick<ApplyResult, 'gap' | 'refused' | 'forked'>): ApplyResult => ({ applied, duplicates, ...rest, cursor: this.#moveTo(tenantId, cursor, changeId, held.epoch) });
      for (const change of ordered) {
        // another change at the number this device applied last: the log was rewound, and what
        // follows is not the log this device followed (DeviceSync checks its place with the hub)
        if (change.seq === held.seq && held.changeId !== null && change.change_id !== held.changeId) return { ...done({ gap: null, refused: null }), forked: true };
        if (change.seq <= cursor) {
          duplicates++;
          continue;
        }
        if (change.seq > cursor + 1) return done({ gap: { from: cursor + 1, to: change.seq - 1 }, refused: null });
        const refusal = this.#applyOne(change, after);
        if (refusal) return done({ gap: null, refused: { seq: change.seq, reason: refusal } });
        cursor = change.seq;
        changeId = change.change_id;
        applied++;
      }
      return done({ gap: null, refused: null });
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
        this.recordErasure(change.tenant_id, change.external_user_id, change.version, change.seq);
        after.push(() => gallery.remove(change.external_user_id));
        return null;
      case 'user.groups':
        this.store.groups.set(change.tenant_id, change.external_user_id, change.groups);
        return null;
      case 'user.pin':
        return this.#applyPin(change.tenant_id, change.external_user_id, change.pin);
      case 'tenant.settings':
        this.#applyTenant(change.tenant_id, change);
        return null;
      case 'user.upsert':
        return this.#applyTemplate(change.tenant_id, change, after);
    }
  }

  /**
   * A person's PIN from the hub (a user.pin of the log, or a snapshot's): its verifier opened with
   * the key version it names and held with the hub's tag; null removes it. Undefined (a snapshot's
   * person without one) removes only a PIN the fleet gave, not one set on this door before it joined.
   */
  #applyPin(tenantId: string, externalUserId: string, pin: FleetPin | null | undefined): string | null {
    if (!pin) {
      this.store.pins.remove(tenantId, externalUserId, { fleetOnly: pin === undefined });
      return null;
    }
    try {
      this.store.pins.hold(tenantId, externalUserId, { keyVersion: pin.key_version, tag: pin.tag }, this.#openPin(tenantId, externalUserId, pin));
      return null;
    } catch (err) {
      if (!(err instanceof EnvelopeError)) throw err;
      return err.message;
    }
  }

  #openPin(tenantId: string, externalUserId: string, pin: FleetPin): PinVerifier {
    const key = this.keyring(tenantId)?.key(pin.key_version);
    if (!key) throw new EnvelopeError('wrong_key', `no tenant key of version ${pin.key_version} on this device`);
    return openFleetPin(key, pin, { tenantId, externalUserId });
  }

  /** A person's template from the hub (an upsert of the log, or a user of a snapshot); returns why it was refused, or null. */
  #applyTemplate(tenantId: string, u: SnapshotUser, after: (() => void)[]): string | null {
    const gallery = this.index.of(tenantId);
    const opened = this.#open(tenantId, u);
    if ('refusal' in opened) return opened.refusal;
    if (opened.embedding === 'wrong_model') {
      // the log moves on; this person cannot be recognised here until they enrol with this model
      this.store.users.flagReenrolment(tenantId, u.external_user_id, 'model_changed');
      after.push(() => gallery.remove(u.external_user_id));
      return null;
    }
    const held = this.store.users.replicate(tenantId, u.external_user_id, u.version, { ...this.#further(tenantId, u), [this.model]: opened.embedding });
    after.push(() => gallery.upsert(u.external_user_id, held));
    return null;
  }

  /** The person's template of the fleet model, opened (`wrong_model`: another model made it), or why it does not open. */
  #open(tenantId: string, u: SnapshotUser): { embedding: Float32Array | 'wrong_model' } | { refusal: string } {
    const key = this.keyring(tenantId)?.key(u.key_version);
    if (!key) return { refusal: `no tenant key of version ${u.key_version} on this device` };
    const binding = { tenantId, externalUserId: u.external_user_id, version: u.version, model: u.model, keyVersion: u.key_version };
    try {
      return { embedding: openTemplate(key, u.template, binding, this.model) };
    } catch (err) {
      if (!(err instanceof EnvelopeError)) throw err;
      return err.code === 'wrong_model' ? { embedding: 'wrong_model' } : { refusal: err.code };
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
    this.store.tenants.update(tenantId, { name: t.name, allowedOrigins: t.allowed_origins, livenessMode: t.liveness_mode, padThreshold: t.pad_threshold ?? null });
  }

  /** The snapshot of the tenant being loaded here, if any (it survives a restart). */
  snapshot(tenantId: string): SnapshotProgress | undefined {
    const row = this.store.db.prepare('SELECT snapshot_seq, after_user, complete, epoch FROM sync_snapshots WHERE tenant_id = ?').get(tenantId) as
      | { snapshot_seq: number | null; after_user: string | null; complete: number; epoch: string | null }
      | undefined;
    return row && { snapshotSeq: row.snapshot_seq, afterUser: row.after_user, complete: row.complete === 1, epoch: row.epoch };
  }

  beginSnapshot(tenantId: string): void {
    this.store.db.prepare('INSERT INTO sync_snapshots (tenant_id, snapshot_seq, after_user, started_at) VALUES (?, NULL, NULL, ?) ON CONFLICT (tenant_id) DO NOTHING').run(tenantId, new Date().toISOString());
  }

  /**
   * Stages one chunk of a snapshot: its users are kept as the hub sent them (sealed under the
   * tenant key) until the last chunk is in, and nothing this device decides on changes before
   * then. The progress moves in the same transaction, so a crash resumes where it was. A chunk
   * that does not follow the last one staged, or is not authenticated, is ignored.
   */
  stageSnapshotChunk(tenantId: string, chunk: SnapshotChunk): { staged: number; complete: boolean; ignored: boolean } {
    const ignored = { staged: 0, complete: false, ignored: true };
    return this.store.db.transaction(() => {
      const progress = this.snapshot(tenantId);
      if (!progress || progress.complete || chunk.tenant_id !== tenantId || chunk.after !== progress.afterUser) return ignored;
      // a chunk says who exists: a forged one could erase people (DeviceSync checks replies; this is the last line)
      if (!isAuthentic(this.replyKey(tenantId), 'reply', tenantId, chunk)) return ignored;
      // a person erased by the log while the snapshot loads (a tombstone here) stays erased unless re-enrolled since
      const stage = this.store.db.prepare(
        `INSERT INTO sync_snapshot_users (tenant_id, external_user_id, version, user) VALUES (?, ?, ?, ?)
         ON CONFLICT (tenant_id, external_user_id) DO UPDATE SET version = excluded.version, user = excluded.user
         WHERE sync_snapshot_users.user IS NOT NULL OR excluded.version > sync_snapshot_users.version`,
      );
      for (const u of chunk.users) {
        // a chunk is staged only if each of its templates opens: the commit then cannot fail half way
        const opened = this.#open(tenantId, u);
        if ('refusal' in opened) throw new Error(`snapshot: the template of a user does not open (${opened.refusal})`);
        if (u.pin) this.#openPin(tenantId, u.external_user_id, u.pin);
        stage.run(tenantId, u.external_user_id, u.version, JSON.stringify(u));
      }
      const complete = chunk.next === null;
      // the first chunk's head is where the log resumes: its change_id is the one this device's place is checked by
      this.store.db
        .prepare(
          `UPDATE sync_snapshots SET snapshot_seq = COALESCE(snapshot_seq, ?), seq_change_id = CASE WHEN snapshot_seq IS NULL THEN ? ELSE seq_change_id END,
             epoch = COALESCE(epoch, ?), after_user = ?, tenant = COALESCE(?, tenant), complete = ?, head_seq = ?, digest = ? WHERE tenant_id = ?`,
        )
        .run(chunk.seq, chunk.seq_change_id ?? null, chunk.epoch ?? null, chunk.next, chunk.tenant ? JSON.stringify(chunk.tenant) : null, complete ? 1 : 0, complete ? (chunk.head ?? null) : null, complete ? (chunk.digest ?? null) : null, tenantId);
      return { staged: chunk.users.length, complete, ignored: false };
    })();
  }

  /** Drops what a snapshot has staged and loads it again from its first chunk. */
  restartSnapshot(tenantId: string): void {
    this.store.db.transaction(() => {
      this.store.db.prepare('DELETE FROM sync_snapshot_users WHERE tenant_id = ?').run(tenantId);
      this.store.db
        .prepare('UPDATE sync_snapshots SET snapshot_seq = NULL, seq_change_id = NULL, epoch = NULL, after_user = NULL, tenant = NULL, complete = 0, head_seq = NULL, digest = NULL WHERE tenant_id = ?')
        .run(tenantId);
    })();
  }

  /**
   * A deletion of the log that arrives while a snapshot loads is applied at once (the cursor does
   * not move: the log replays it after the snapshot): a person deleted at the hub is never
   * recognised here, and a staged copy of them is kept out of the snapshot. Returns the erased.
   */
  eraseDuringSnapshot(tenantId: string, changes: readonly Change[]): number {
    const ring = this.keyring(tenantId);
    const deletions = changes.filter(
      (c): c is Extract<Change, { kind: 'user.delete' }> =>
        c.kind === 'user.delete' && c.tenant_id === tenantId && ring !== undefined && isAuthentic((v) => ring.changeKey(c.seq, v), 'change', tenantId, c, CHANGE_FIELDS_OUTSIDE_AUTH),
    );
    if (deletions.length === 0) return 0;
    const gallery = this.index.of(tenantId);
    return this.#asReplica(
      (after) =>
        this.store.db.transaction(() => {
          let erased = 0;
          for (const d of deletions) {
            const held = this.store.users.get(tenantId, d.external_user_id);
            if (held && held.version <= d.version) {
              this.store.eraseUser(tenantId, d.external_user_id, () => null);
              this.recordErasure(tenantId, d.external_user_id, d.version, d.seq);
              after.push(() => gallery.remove(d.external_user_id));
              // a commit in progress may have written them before: its index update waits, so this follows it
              this.#committing?.push(() => gallery.remove(d.external_user_id));
              erased++;
            }
            // the tombstone (until the commit) keeps a chunk read before the deletion out
            this.store.db
              .prepare(
                `INSERT INTO sync_snapshot_users (tenant_id, external_user_id, version, user) VALUES (?, ?, ?, NULL)
                 ON CONFLICT (tenant_id, external_user_id) DO UPDATE SET version = excluded.version, user = NULL WHERE sync_snapshot_users.version <= excluded.version`,
              )
              .run(tenantId, d.external_user_id, d.version);
          }
          return erased;
        })(),
      (erased) => erased > 0,
    );
  }

  /**
   * Makes a complete snapshot this device's copy: the staged users are written (at the hub's
   * version), and users held here that the hub does not have are erased, except those with a
   * change of this device still on its way to the hub. The writes go in slices (the door's API
   * keeps answering), but what the door decides on, its 1:N index, changes once, after the last:
   * it never decides on half a snapshot. The cursor is then the first chunk's head, and the log
   * after it follows; the head and digest the hub announced with the last chunk are checked once
   * the log reaches that head (`apply`).
   */
  async commitSnapshot(tenantId: string, options: { slice?: number; rewound?: boolean } = {}): Promise<{ applied: number; removed: number; lostDeletions: number }> {
    const slice = options.slice ?? 256;
    const progress = this.snapshot(tenantId);
    if (!progress?.complete) throw new Error('snapshot: not complete');
    const pending = new Set(
      (this.store.db.prepare('SELECT DISTINCT external_user_id FROM sync_outbox WHERE tenant_id = ?').all(tenantId) as { external_user_id: string }[]).map((r) => r.external_user_id),
    );
    const after: (() => void)[] = [];
    const lost: LostDeletion[] = [];
    this.#committing = after;
    try {
      const applied = await this.#commitSlices(tenantId, pending, after, slice, lost, options.rewound === true);
      return { applied, removed: this.#commitEnd(tenantId, pending, after, lost), lostDeletions: lost.length };
    } finally {
      // the index follows the database at once, after the last write (also if a write failed)
      this.#committing = null;
      for (const run of after) run();
    }
  }

  async #commitSlices(tenantId: string, pending: ReadonlySet<string>, after: (() => void)[], slice: number, lost: LostDeletion[], rewound: boolean): Promise<number> {
    const erasedHere = this.store.db.prepare('SELECT version, seq, epoch FROM sync_erasures WHERE tenant_id = ? AND pseudonym = ?');
    const progress = this.snapshot(tenantId);
    const page = this.store.db.prepare('SELECT external_user_id, user FROM sync_snapshot_users WHERE tenant_id = ? AND external_user_id > ? ORDER BY external_user_id LIMIT ?');
    let applied = 0;
    let from = '';
    for (;;) {
      const rows = page.all(tenantId, from, slice) as { external_user_id: string; user: string | null }[];
      if (rows.length === 0) break;
      from = rows[rows.length - 1].external_user_id;
      // the index updates of every slice wait in `after`, for the end
      const written: (() => void)[] = [];
      applied += this.#asReplica(
        () =>
          this.store.db.transaction(() => {
            let n = 0;
            for (const row of rows) {
              if (row.user === null) continue; // erased by the log during the load
              const u = JSON.parse(row.user) as SnapshotUser;
              // deleted here at a later version than the hub's snapshot holds: never brought back. A
              // deletion the log holds after the snapshot's head (same epoch, not a rewound log) comes
              // with the log; any other the hub's log may have lost (a failover): it goes to the hub
              // again, which sequences it only if the person is still there (SyncSubmission.lost_deletion)
              const erased = erasedHere.get(tenantId, this.store.users.pseudonym(tenantId, u.external_user_id)) as { version: number; seq: number | null; epoch: string | null } | undefined;
              if (erased && erased.version > u.version && !this.store.users.get(tenantId, u.external_user_id)) {
                const followsInLog = !rewound && erased.seq !== null && erased.epoch === (progress?.epoch ?? null) && erased.seq > (progress?.snapshotSeq ?? 0);
                if (!followsInLog) lost.push({ externalUserId: u.external_user_id, version: erased.version });
                continue;
              }
              this.store.groups.set(tenantId, u.external_user_id, u.groups ?? []);
              const pinRefusal = this.#applyPin(tenantId, u.external_user_id, u.pin);
              if (pinRefusal) throw new Error(`snapshot: the PIN of a user does not open (${pinRefusal})`);
              if (pending.has(u.external_user_id) || this.#holds(tenantId, u)) continue;
              const refusal = this.#applyTemplate(tenantId, u, written);
              if (refusal) throw new Error(`snapshot: the template of a user does not open (${refusal})`);
              n++;
            }
            return n;
          })(),
        () => false,
      );
      after.push(...written); // the slice committed
      await new Promise((resolve) => setImmediate(resolve));
    }
    return applied;
  }

  /**
   * The commit's last transaction: who the hub does not have is erased, a deletion the hub lost
   * joins the outbox again, the cursor moves, the head and digest wait to be checked.
   */
  #commitEnd(tenantId: string, pending: ReadonlySet<string>, after: (() => void)[], lost: readonly LostDeletion[]): number {
    const gallery = this.index.of(tenantId);
    return this.#asReplica(
      () =>
        this.store.db.transaction(() => {
          const tenant = (this.store.db.prepare('SELECT tenant FROM sync_snapshots WHERE tenant_id = ?').get(tenantId) as { tenant: string | null }).tenant;
          if (tenant) this.#applyTenant(tenantId, JSON.parse(tenant) as Omit<TenantSettings, 'kind'>);
          const gone = this.store.db
            .prepare(
              `SELECT u.external_user_id FROM users u WHERE u.tenant_id = ? AND u.deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM sync_snapshot_users s WHERE s.tenant_id = u.tenant_id AND s.external_user_id = u.external_user_id AND s.user IS NOT NULL)`,
            )
            .all(tenantId) as { external_user_id: string }[];
          let n = 0;
          for (const { external_user_id: id } of gone) {
            if (pending.has(id)) continue;
            this.store.eraseUser(tenantId, id, () => null);
            after.push(() => gallery.remove(id));
            n++;
          }
          const resend = this.store.db.prepare('INSERT INTO sync_outbox (change_id, tenant_id, external_user_id, kind, version, created_at, lost) VALUES (?, ?, ?, ?, ?, ?, 1)');
          for (const d of lost) resend.run(crypto.randomUUID(), tenantId, d.externalUserId, 'delete', d.version, new Date().toISOString());
          this.store.db.prepare('DELETE FROM sync_erasures WHERE tenant_id = ? AND erased_at < ?').run(tenantId, new Date(Date.now() - ERASURES_KEPT_MS).toISOString());
          const done = this.store.db.prepare('SELECT snapshot_seq, seq_change_id, epoch, head_seq, digest FROM sync_snapshots WHERE tenant_id = ?').get(tenantId) as {
            snapshot_seq: number;
            seq_change_id: string | null;
            epoch: string | null;
            head_seq: number | null;
            digest: string | null;
          };
          this.#moveTo(tenantId, done.snapshot_seq, done.seq_change_id, done.epoch);
          this.store.db.prepare('DELETE FROM sync_snapshot_users WHERE tenant_id = ?').run(tenantId);
          this.store.db.prepare('DELETE FROM sync_snapshots WHERE tenant_id = ?').run(tenantId);
          if (done.head_seq !== null && done.digest !== null) {
            this.store.db.prepare('INSERT OR REPLACE INTO sync_snapshot_checks (tenant_id, head_seq, digest) VALUES (?, ?, ?)').run(tenantId, done.head_seq, done.digest);
          }
          return n;
        })(),
        (n) => n > 0,
      );
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

  #moveTo(tenantId: string, seq: number, changeId: string | null, epoch: string | null): number {
    this.store.db
      .prepare(
        `INSERT INTO sync_cursors (tenant_id, applied_seq, change_id, epoch, updated_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (tenant_id) DO UPDATE SET applied_seq = excluded.applied_seq, change_id = excluded.change_id, epoch = excluded.epoch, updated_at = excluded.updated_at`,
      )
      .run(tenantId, seq, changeId, epoch, new Date().toISOString());
    return seq;
  }
}
