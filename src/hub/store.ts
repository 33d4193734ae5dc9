import crypto from 'node:crypto';
import pg from 'pg';
import { HubError } from './errors.ts';
import { hubPool } from './database.ts';
import { HubDevices } from './devices.ts';
import { HubKeys, type TenantKey } from './keys.ts';
import { EnvelopeError, type MessageAuth, type SealedTemplate, authenticate, resealTemplate } from '../sync/envelope.ts';
import { userSetDigest } from '../sync/digest.ts';
import type { FleetPin } from '../sync/pin-envelope.ts';
import { newEventId } from '../store/audit.ts';
import {
  type AdminChange,
  type Change,
  type ChangeBody,
  type DoorEvents,
  type ModelTemplate,
  type SnapshotUser,
  type SubmittedChange,
  type TenantSettings,
  type UserUpsert,
  CHANGE_FIELDS_OUTSIDE_AUTH,
  MAX_CHUNK_BYTES,
  MAX_GROUPS_PER_USER,
} from '../sync/protocol.ts';

/**
 * The hub's central store in PostgreSQL: the fleet's users and sealed templates, and each tenant's
 * change log. Every key starts with tenant_id (a Citus distribution column). A change gets its
 * sequence number from the tenant's counter row, locked in the same transaction that records the
 * change and applies it: two hub processes on one database serialise per tenant on that row, so
 * numbers are never used twice and never skipped, and a change committed is a change in the log
 * (the log is the outbox: publishing reads it, so a hub that dies after the commit loses nothing).
 */

const MIGRATIONS = [
  `CREATE TABLE hub_tenants (
     tenant_id   uuid PRIMARY KEY,
     name        text NOT NULL,
     next_seq    bigint NOT NULL DEFAULT 1,
     created_at  timestamptz NOT NULL DEFAULT now()
   );
   CREATE TABLE hub_changes (
     tenant_id         uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     seq               bigint NOT NULL,
     change_id         uuid NOT NULL,
     origin            text NOT NULL,
     kind              text NOT NULL,
     external_user_id  text NOT NULL,
     body              jsonb NOT NULL,
     committed_at      timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (tenant_id, seq),
     UNIQUE (tenant_id, change_id)
   );
   CREATE TABLE hub_users (
     tenant_id         uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     external_user_id  text NOT NULL,
     version           integer NOT NULL,
     deleted           boolean NOT NULL DEFAULT false,
     model             text,
     key_version       integer,
     template          jsonb,
     seq               bigint NOT NULL,
     PRIMARY KEY (tenant_id, external_user_id)
   );
   CREATE TABLE hub_conflicts (
     tenant_id         uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     change_id         uuid NOT NULL,
     origin            text NOT NULL,
     external_user_id  text NOT NULL,
     reason            text NOT NULL,
     body              jsonb NOT NULL,
     recorded_at       timestamptz NOT NULL DEFAULT now(),
     resolved_at       timestamptz,
     PRIMARY KEY (tenant_id, change_id)
   );`,
  // each tenant's key, sealed with the hub's master key (the hub wraps it for each device)
  `CREATE TABLE hub_tenant_keys (
     tenant_id    uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     key_version  integer NOT NULL,
     nonce        bytea NOT NULL,
     sealed       bytea NOT NULL,
     created_at   timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (tenant_id, key_version)
   );`,
  // the devices of each tenant as they last reported (their retained state)
  `CREATE TABLE hub_devices (
     tenant_id    uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     device_id    text NOT NULL,
     state        text NOT NULL,
     applied_seq  bigint NOT NULL DEFAULT 0,
     digest       text,
     users        integer,
     model        text,
     version      text,
     boot         integer,
     diverged     boolean NOT NULL DEFAULT false,
     last_seen    timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (tenant_id, device_id)
   );`,
  // every door's access decisions and alarms, once each (event ids are unique per device)
  `CREATE TABLE hub_access_events (
     tenant_id         uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     event_id          text NOT NULL,
     device_id         text NOT NULL,
     door_id           text NOT NULL,
     type              text NOT NULL,
     result            text,
     reason            text,
     external_user_id  text,
     score             double precision,
     factor            text,
     occurred_at       text NOT NULL,
     received_at       timestamptz NOT NULL DEFAULT now(),
     delayed           boolean NOT NULL,
     PRIMARY KEY (tenant_id, event_id)
   );
   CREATE INDEX hub_access_events_time ON hub_access_events (tenant_id, received_at);`,
  // the hub's own /biometry/v1: tenants' settings and API keys, capture sessions, audit trail
  `ALTER TABLE hub_tenants ADD COLUMN liveness_mode text NOT NULL DEFAULT 'active',
                           ADD COLUMN allowed_origins jsonb NOT NULL DEFAULT '[]';
   ALTER TABLE hub_users ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
                         ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
   CREATE TABLE hub_api_keys (
     tenant_id   uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     key_id      text NOT NULL,
     key_hash    bytea NOT NULL,
     created_at  timestamptz NOT NULL DEFAULT now(),
     revoked_at  timestamptz,
     PRIMARY KEY (tenant_id, key_id)
   );
   -- a key is 32 random bytes: its hash names one row without a (cross-shard) unique constraint
   CREATE INDEX hub_api_keys_hash ON hub_api_keys (key_hash);
   CREATE TABLE hub_sessions (
     tenant_id         uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     id                uuid NOT NULL,
     client_state      text NOT NULL,
     flow              text NOT NULL,
     external_user_id  text,
     redirect_url      text NOT NULL,
     token_hash        bytea NOT NULL,
     status            text NOT NULL,
     reason            text,
     score             double precision,
     result_user_id    text,
     event_id          text,
     created_at        timestamptz NOT NULL,
     expires_at        timestamptz NOT NULL,
     bound_at          timestamptz,
     completed_at      timestamptz,
     challenge         jsonb,
     door_id           text,
     factor            text NOT NULL DEFAULT 'face',
     candidates        jsonb,
     PRIMARY KEY (tenant_id, id),
     UNIQUE (tenant_id, client_state)
   );
   CREATE INDEX hub_sessions_token ON hub_sessions (token_hash);
   CREATE INDEX hub_sessions_open ON hub_sessions (expires_at) WHERE status IN ('pending', 'in_progress');
   CREATE TABLE hub_audit_events (
     tenant_id         uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     id                text NOT NULL,
     type              text NOT NULL,
     flow              text,
     session_id        uuid,
     external_user_id  text,
     result            text,
     reason            text,
     score             double precision,
     factor            text,
     door_id           text,
     created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
     PRIMARY KEY (tenant_id, id)
   );
   CREATE INDEX hub_audit_events_time ON hub_audit_events (tenant_id, created_at);`,
  // snapshots read users in byte order (as SQLite compares them on the devices); the log before
  // compacted_seq may be gone (retention), and a device behind it loads a snapshot
  `CREATE INDEX hub_users_snapshot ON hub_users (tenant_id, external_user_id COLLATE "C") WHERE NOT deleted;
   ALTER TABLE hub_tenants ADD COLUMN compacted_seq bigint NOT NULL DEFAULT 0;`,
  // when a diverged device was last told to reload a snapshot
  `ALTER TABLE hub_devices ADD COLUMN repaired_at timestamptz;`,
  // the groups each person is in (user.groups changes; a door's policy may allow only some groups)
  `ALTER TABLE hub_users ADD COLUMN groups jsonb NOT NULL DEFAULT '[]';`,
  // each change's MAC under the tenant key (sync/envelope.ts): a broker client cannot forge one
  `ALTER TABLE hub_changes ADD COLUMN auth jsonb;`,
  // joining with a code: single-use claims (only their hash is kept), and each device's public key
  `CREATE TABLE hub_claims (
     tenant_id   uuid NOT NULL REFERENCES hub_tenants (tenant_id),
     code_hash   bytea NOT NULL,
     device_id   text NOT NULL,
     expires_at  timestamptz NOT NULL,
     used_at     timestamptz,
     created_at  timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (tenant_id, code_hash)
   );
   -- a code is 80 random bits: its hash names one claim without a (cross-shard) unique constraint
   CREATE INDEX hub_claims_code ON hub_claims (code_hash);
   ALTER TABLE hub_devices ADD COLUMN public_key text, ADD COLUMN joined_at timestamptz;
   -- the key the hub signs each tenant's remote commands with (Ed25519), sealed like the tenant keys
   CREATE TABLE hub_command_keys (
     tenant_id   uuid PRIMARY KEY REFERENCES hub_tenants (tenant_id),
     public_key  text NOT NULL,
     nonce       bytea NOT NULL,
     sealed      bytea NOT NULL
   );`,
  // changes sequenced before they were authenticated, found at each start without reading the log
  `CREATE INDEX hub_changes_unauthenticated ON hub_changes (tenant_id, seq) WHERE auth IS NULL;`,
  // key rotation (a revoked device): each key version authenticates the log from since_seq on
  `ALTER TABLE hub_tenant_keys ADD COLUMN since_seq bigint NOT NULL DEFAULT 1;
   ALTER TABLE hub_devices ADD COLUMN revoked_at timestamptz;`,
  // the admin console: its accounts (made with the CLI) and sign-in sessions (only hashes of the tokens)
  `ALTER TABLE hub_devices ADD COLUMN doors jsonb;
   CREATE TABLE hub_admins (
     name           text PRIMARY KEY,
     password_hash  text NOT NULL,
     created_at     timestamptz NOT NULL DEFAULT now()
   );
   CREATE TABLE hub_console_sessions (
     token_hash  bytea PRIMARY KEY,
     admin       text NOT NULL REFERENCES hub_admins (name) ON DELETE CASCADE,
     csrf        text NOT NULL,
     expires_at  timestamptz NOT NULL
   );`,
  // a person's templates of further models at their version (user.upsert's `templates`)
  `ALTER TABLE hub_users ADD COLUMN templates jsonb NOT NULL DEFAULT '[]';`,
  // each device's Ed25519 signing key (sync/signature.ts): the hub takes a sync message in a
  // device's name only with its signature; a device that joined without one (an earlier release)
  // is heard on the tenant key alone until it upgrades
  `ALTER TABLE hub_devices ADD COLUMN signing_key text;`,
  // failed console sign-ins per admin name and client address (console/signin-throttle.ts),
  // shared by every hub process
  `CREATE TABLE hub_console_signins (
     name      text NOT NULL,
     address   text NOT NULL,
     failures  integer NOT NULL,
     last_at   timestamptz NOT NULL,
     PRIMARY KEY (name, address)
   );`,
  // a tenant's own floor for the anti-spoofing network (NULL: its doors' own; tenant.settings carries it)
  `ALTER TABLE hub_tenants ADD COLUMN pad_threshold double precision CHECK (pad_threshold BETWEEN 0 AND 1);`,
  // what a running hub says of itself to its CLI (its public URL, for the join command it prints)
  `CREATE TABLE hub_settings (key text PRIMARY KEY, value text NOT NULL);`,
  // how an admin resolved a conflict, and who (hub/conflicts.ts)
  `ALTER TABLE hub_conflicts ADD COLUMN resolution text, ADD COLUMN resolved_by text;`,
  // each person's PIN for face+pin doors (user.pin: a sealed verifier and its tag, never the PIN),
  // and a user.pin change's MAC as user.erased, the form a device of an earlier release takes
  `ALTER TABLE hub_users ADD COLUMN pin jsonb;
   ALTER TABLE hub_changes ADD COLUMN blank_auth jsonb;`,
];

/**
 * `duplicate`: the change_id had been sequenced before (a retry); the change is the one it got then.
 * `recheck`: a template was sequenced after the place the change's duplicate check had seen
 * (`checkedThrough`): nothing was written; check again and resubmit.
 */
export type AppendResult = { status: 'sequenced'; change: Change; duplicate?: true } | { status: 'conflict'; reason: 'stale_version' | 'deleted' } | { status: 'recheck' } | { status: 'not_lost' };

export interface AppendMeta {
  changeId?: string;
  origin: string;
  /** The place in the tenant's log the fleet's 1:N duplicate check of this enrolment had seen. */
  checkedThrough?: number;
  /**
   * A deletion a door sends again because the log lost it in a failover: sequenced only while the
   * hub holds the person below its version (else `not_lost`: several doors send the same one).
   */
  lostDeletion?: boolean;
}


/** At most this many changes of a tenant in one transaction. */
const GROUP_COMMIT_MAX = 200;

/** A person as the hub holds them, read with their row locked before a batch is decided. */
interface HeldUser {
  version: number;
  deleted: boolean;
  model: string | null;
  key_version: number | null;
  template: SealedTemplate | null;
  templates: ModelTemplate[];
}

/**
 * A door's templates of further models, as the upsert the log carries: the person's first template
 * as the hub holds it, at the same version (a device of an earlier release applies it again and
 * holds what it held), and their further templates with these replacing those of the same model.
 */
function withFurtherTemplates(body: Extract<SubmittedChange, { kind: 'user.templates' }>, held: HeldUser): UserUpsert {
  const kept = held.templates.filter((t) => !body.templates.some((n) => n.model === t.model));
  return {
    kind: 'user.upsert',
    external_user_id: body.external_user_id,
    version: body.version,
    model: held.model as string,
    key_version: held.key_version as number,
    template: held.template as SealedTemplate,
    templates: [...kept, ...body.templates],
  };
}

interface PendingAppend {
  body: SubmittedChange;
  changeId: string;
  origin: string;
  checkedThrough?: number;
  lostDeletion?: boolean;
  resolve: (result: AppendResult) => void;
  reject: (err: unknown) => void;
}

export class HubStore {
  readonly #pending = new Map<string, PendingAppend[]>();
  readonly #draining = new Set<string>();

  /** What to do once a transaction of #transaction commits, by its connection. */
  readonly #afterCommit = new WeakMap<pg.PoolClient, (() => void)[]>();

  /** The tenant keys and command keys, sealed under the master key. */
  readonly keys: HubKeys;
  /** The devices of each tenant: claims, joins, revocations and what they report. */
  readonly devices: HubDevices;

  /** The epoch of the log the hub writes to (hub/database.ts: the server's system id and timeline). */
  #epoch: string | null = null;
  readonly #epochListeners: ((epoch: string, before: string | null) => void)[] = [];

  private constructor(
    readonly pool: pg.Pool,
    masterKey: Buffer | null,
  ) {
    this.keys = new HubKeys(
      pool,
      masterKey,
      (tenantId, run) =>
        this.#transaction(async (db) => {
          if (!(await this.lockTenant(db, tenantId))) throw new HubError(`no tenant ${tenantId} at the hub (authface hub tenant add)`);
          return run(db);
        }),
      (db, done) => this.#afterCommit.get(db)?.push(done),
    );
    this.devices = new HubDevices(this);
  }

  /**
   * Connects and brings the schema up to date (each migration in its own transaction, once).
   * `masterKey` (AUTHFACE_HUB_MASTER_KEY) opens the tenant keys: without it the store can report
   * (`authface hub status`) but not sequence, since every change is authenticated.
   */
  static async open(databaseUrl: string, options: { masterKey?: Buffer; onIdleError?: (err: Error) => void } = {}): Promise<HubStore> {
    // one host, or a primary and its standbys: each connection goes to the writable one (hub/database.ts)
    const seen: { store?: HubStore } = {};
    const pool = hubPool(databaseUrl, { max: 10, onIdleError: options.onIdleError, onEpoch: (epoch) => seen.store?.sawEpoch(epoch) });
    const store = (seen.store = new HubStore(pool, options.masterKey ?? null));
    try {
      await store.#migrate();
      if (store.keys.masterKey) await store.#authenticateOldChanges();
    } catch (err) {
      await store.close();
      throw err;
    }
    return store;
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  /**
   * The epoch of the log (hub/database.ts), as the newest connection found it: every head, range,
   * log message and snapshot chunk the hub sends carries it, and a door that sees another one than
   * it follows checks its place in the log before it applies anything more. Null before the first
   * connection, or on a server that does not say.
   */
  get epoch(): string | null {
    return this.#epoch;
  }

  /** Calls `listener` when a connection finds the log in another epoch than the last (a failover). */
  onEpochChange(listener: (epoch: string, before: string | null) => void): void {
    this.#epochListeners.push(listener);
  }

  /** A connection found the log in `epoch` (hub/database.ts). */
  sawEpoch(epoch: string | null): void {
    if (epoch === null || epoch === this.#epoch) return;
    const before = this.#epoch;
    this.#epoch = epoch;
    for (const listener of this.#epochListeners) listener(epoch, before);
  }

  /**
   * Adds a tenant. Its settings are the first change of its log: every door takes them from there
   * (a door's own copy of the tenant is never edited locally). Returns that change, to publish.
   */
  async createTenant(tenantId: string, name: string, settings: { allowedOrigins?: string[]; livenessMode?: 'passive' | 'active'; padThreshold?: number } = {}): Promise<Change> {
    const { allowedOrigins = [], livenessMode = 'active', padThreshold } = settings;
    return this.#transaction(async (db) => {
      const r = await db.query('INSERT INTO hub_tenants (tenant_id, name, liveness_mode, allowed_origins) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO NOTHING', [
        tenantId,
        name,
        livenessMode,
        JSON.stringify(allowedOrigins),
      ]);
      if (r.rowCount === 0) throw new HubError(`tenant ${tenantId} is already at the hub`);
      const pad = padThreshold === undefined ? {} : { pad_threshold: padThreshold };
      return this.appendAdmin(db, tenantId, { kind: 'tenant.settings', name, allowed_origins: allowedOrigins, liveness_mode: livenessMode, ...pad });
    });
  }

  /** The MAC of a change as the hub sequences it (every field but committed_at, which the commit sets). */
  #authOf(key: TenantKey, tenantId: string, change: { seq: number; changeId: string; origin: string; body: ChangeBody }): MessageAuth {
    return authenticate(key, 'change', tenantId, { ...change.body, tenant_id: tenantId, seq: change.seq, change_id: change.changeId, origin: change.origin }, CHANGE_FIELDS_OUTSIDE_AUTH).auth;
  }

  /** Changes sequenced before changes were authenticated get their MAC (once, at the first start with the master key). */
  async #authenticateOldChanges(): Promise<void> {
    for (;;) {
      const done = await this.#transaction(async (db) => {
        const r = await db.query<ChangeRow>('SELECT * FROM hub_changes WHERE auth IS NULL LIMIT 500 FOR UPDATE');
        for (const row of r.rows) {
          const auth = this.#authOf(await this.keys.current(row.tenant_id, db), row.tenant_id, { seq: Number(row.seq), changeId: row.change_id, origin: row.origin, body: row.body });
          await db.query('UPDATE hub_changes SET auth = $3 WHERE tenant_id = $1 AND seq = $2', [row.tenant_id, row.seq, JSON.stringify(auth)]);
        }
        return r.rowCount === 0;
      });
      if (done) return;
    }
  }

  /**
   * Sequences one change and applies it to the central state, in one transaction. A change_id
   * already sequenced returns its change again (retries are harmless). The rules, so that no change
   * is ever dropped silently:
   * - an upsert at or below the version the hub has is `stale_version`;
   * - an upsert at or below a deletion's tombstone is `deleted` (a deletion wins over a concurrent change);
   * both are recorded in hub_conflicts for an admin, and nothing is sequenced.
   */
  async append(tenantId: string, body: SubmittedChange, meta: AppendMeta): Promise<AppendResult> {
    return new Promise<AppendResult>((resolve, reject) => {
      const queue = this.#pending.get(tenantId) ?? [];
      queue.push({ body, changeId: meta.changeId ?? crypto.randomUUID(), origin: meta.origin, checkedThrough: meta.checkedThrough, lostDeletion: meta.lostDeletion, resolve, reject });
      this.#pending.set(tenantId, queue);
      if (!this.#draining.has(tenantId)) void this.#drain(tenantId);
    });
  }

  /**
   * Group commit: the changes of a tenant that arrive while its previous transaction runs are
   * sequenced together in the next one (one commit, one fsync, for up to GROUP_COMMIT_MAX).
   * They are serialised per tenant anyway, by the counter row.
   */
  async #drain(tenantId: string): Promise<void> {
    this.#draining.add(tenantId);
    try {
      for (;;) {
        const queue = this.#pending.get(tenantId);
        const batch = queue?.splice(0, GROUP_COMMIT_MAX) ?? [];
        if (batch.length === 0) break;
        try {
          const results = await this.#transaction((db) => this.#appendBatch(db, tenantId, batch));
          batch.forEach((item, i) => item.resolve(results[i]));
        } catch (err) {
          for (const item of batch) item.reject(err);
        }
      }
    } finally {
      this.#draining.delete(tenantId);
      if (this.#pending.get(tenantId)?.length === 0) this.#pending.delete(tenantId);
    }
  }

  /**
   * Sequences one change inside the caller's transaction (the hub's own API: the change commits
   * with the session that made it). Lock order as in group commit: the tenant's counter row first.
   */
  async appendWithin(db: pg.PoolClient, tenantId: string, body: SubmittedChange, meta: AppendMeta): Promise<AppendResult> {
    const [result] = await this.#appendBatch(db, tenantId, [{ body, changeId: meta.changeId ?? crypto.randomUUID(), origin: meta.origin, checkedThrough: meta.checkedThrough, resolve: () => undefined, reject: () => undefined }]);
    return result;
  }

  async #appendBatch(db: pg.PoolClient, tenantId: string, batch: readonly PendingAppend[]): Promise<AppendResult[]> {
    const counter = await db.query<{ next_seq: string }>('SELECT next_seq FROM hub_tenants WHERE tenant_id = $1 FOR UPDATE', [tenantId]);
    if (counter.rowCount === 0) throw new Error(`no tenant ${tenantId} at the hub`);
    let next = Number(counter.rows[0].next_seq);
    const key = await this.keys.current(tenantId, db);
    batch = await this.#sealedUnder(key, tenantId, batch);
    // what the batch needs to know, read in two queries rather than two per change
    const known = new Map<string, Change>(
      (await db.query<ChangeRow>('SELECT * FROM hub_changes WHERE tenant_id = $1 AND change_id = ANY($2::uuid[])', [tenantId, batch.map((b) => b.changeId)])).rows.map((r) => [
        r.change_id,
        toChange(r),
      ]),
    );
    const users = new Map<string, HeldUser>(
      (
        await db.query<HeldUser & { external_user_id: string }>(
          'SELECT external_user_id, version, deleted, model, key_version, template, templates FROM hub_users WHERE tenant_id = $1 AND external_user_id = ANY($2::text[]) FOR UPDATE',
          [tenantId, [...new Set(batch.map((b) => b.body.external_user_id))]],
        )
      ).rows.map(({ external_user_id, ...u }) => [external_user_id, u]),
    );
    // decide every change in order first, then write the batch in a few multi-row statements
    const results: AppendResult[] = [];
    const rows: { seq: number; changeId: string; origin: string; body: ChangeBody & { external_user_id: string } }[] = [];
    const conflicts: { changeId: string; origin: string; body: SubmittedChange; reason: 'stale_version' | 'deleted' }[] = [];
    const finalState = new Map<string, { seq: number; body: UserUpsert | Extract<SubmittedChange, { kind: 'user.delete' }>; version: number }>();
    const deletions: { user: string; seq: number }[] = [];
    const pending = new Set<string>(); // change_ids sequenced in this batch (a retry within it is a duplicate)
    // the last template sequenced: an enrolment whose duplicate check saw less must be checked again
    const checks = batch.flatMap((b) => (b.checkedThrough === undefined ? [] : [b.checkedThrough]));
    let lastTemplate = checks.length > 0 ? await this.lastTemplateAfter(db, tenantId, Math.min(...checks)) : 0;
    for (const { body: submitted, changeId, origin, checkedThrough, lostDeletion } of batch) {
      const existing = known.get(changeId);
      if (existing || pending.has(changeId)) {
        // its change is filled in below, once the batch's rows are written
        results.push({ status: 'sequenced', change: existing as Change, duplicate: true });
        continue;
      }
      if (checkedThrough !== undefined && lastTemplate > checkedThrough) {
        results.push({ status: 'recheck' });
        continue;
      }
      const current = users.get(submitted.external_user_id);
      // decided here, where the person's row is locked: two doors sending the same lost deletion at once
      if (lostDeletion && submitted.kind === 'user.delete' && (!current || current.deleted || current.version >= submitted.version)) {
        results.push({ status: 'not_lost' });
        continue;
      }
      if (submitted.kind === 'user.templates') {
        // templates of further models from a door's capture: only onto the version they were made at
        // (a person updated or deleted since has another face, or none; nothing to keep for an admin)
        if (!current || current.deleted || current.version !== submitted.version || !current.template || !current.model || !current.key_version) {
          results.push({ status: 'conflict', reason: current?.deleted ? 'deleted' : 'stale_version' });
          continue;
        }
      } else if (submitted.kind === 'user.upsert' && current && submitted.version <= current.version) {
        const reason = current.deleted ? 'deleted' : 'stale_version';
        conflicts.push({ changeId, origin, body: submitted, reason });
        results.push({ status: 'conflict', reason });
        continue;
      }
      const body = submitted.kind === 'user.templates' ? withFurtherTemplates(submitted, current as HeldUser) : submitted;
      const seq = next++;
      pending.add(changeId);
      rows.push({ seq, changeId, origin, body });
      if (body.kind === 'user.upsert') lastTemplate = seq;
      // the tombstone keeps the highest version seen, so no older upsert can bring the person back
      const version = body.kind === 'user.upsert' ? body.version : Math.max(body.version, current?.version ?? 0);
      users.set(body.external_user_id, body.kind === 'user.upsert' ? { version, deleted: false, model: body.model, key_version: body.key_version, template: body.template, templates: body.templates ?? [] } : { version, deleted: true, model: null, key_version: null, template: null, templates: [] });
      finalState.set(body.external_user_id, { seq, body, version });
      if (body.kind === 'user.delete') deletions.push({ user: body.external_user_id, seq });
      results.push({ status: 'sequenced', change: undefined as unknown as Change });
    }
    if (conflicts.length > 0) {
      await db.query(
        `INSERT INTO hub_conflicts (tenant_id, change_id, origin, external_user_id, reason, body)
         SELECT $1, c, o, u, r, b::jsonb FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(c, o, u, r, b)
         ON CONFLICT (tenant_id, change_id) DO NOTHING`,
        [tenantId, conflicts.map((c) => c.changeId), conflicts.map((c) => c.origin), conflicts.map((c) => c.body.external_user_id), conflicts.map((c) => c.reason), conflicts.map((c) => JSON.stringify(c.body))],
      );
    }
    if (rows.length > 0) {
      const inserted = await db.query<ChangeRow>(
        `INSERT INTO hub_changes (tenant_id, seq, change_id, origin, kind, external_user_id, body, auth)
         SELECT $1, s, c, o, k, u, b::jsonb, a::jsonb FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) AS x(s, c, o, k, u, b, a)
         RETURNING *`,
        [
          tenantId,
          rows.map((r) => r.seq),
          rows.map((r) => r.changeId),
          rows.map((r) => r.origin),
          rows.map((r) => r.body.kind),
          rows.map((r) => r.body.external_user_id),
          rows.map((r) => JSON.stringify(r.body)),
          rows.map((r) => JSON.stringify(this.#authOf(key, tenantId, r))),
        ],
      );
      for (const row of inserted.rows) known.set(row.change_id, toChange(row));
    }
    if (deletions.length > 0) {
      const people = [...new Set(deletions.map((d) => d.user))];
      // the central access log, audit trail and sessions forget whom they were about, and the
      // log's earlier changes of the person lose their templates and id (their places stay: no gap)
      for (const sql of [
        `UPDATE hub_access_events SET external_user_id = 'erased' WHERE tenant_id = $1 AND external_user_id = ANY($2::text[])`,
        `UPDATE hub_audit_events SET external_user_id = 'erased' WHERE tenant_id = $1 AND external_user_id = ANY($2::text[])`,
        'UPDATE hub_sessions SET external_user_id = NULL WHERE tenant_id = $1 AND external_user_id = ANY($2::text[])',
        'UPDATE hub_sessions SET result_user_id = NULL WHERE tenant_id = $1 AND result_user_id = ANY($2::text[])',
      ]) {
        await db.query(sql, [tenantId, people]);
      }
      const blanked = await db.query<{ seq: string; change_id: string; origin: string }>(
        `SELECT DISTINCT h.seq, h.change_id, h.origin FROM hub_changes h JOIN unnest($2::text[], $3::bigint[]) AS d(u, s)
           ON h.external_user_id = d.u AND h.seq < d.s
         WHERE h.tenant_id = $1 AND h.kind IN ('user.upsert', 'user.groups', 'user.pin')`,
        [tenantId, deletions.map((d) => d.user), deletions.map((d) => d.seq)],
      );
      const erased: ChangeBody = { kind: 'user.erased' };
      await db.query(
        `UPDATE hub_changes h SET kind = 'user.erased', external_user_id = '', body = '{"kind":"user.erased"}', auth = b.a::jsonb, blank_auth = NULL
         FROM unnest($2::bigint[], $3::text[]) AS b(s, a) WHERE h.tenant_id = $1 AND h.seq = b.s`,
        [
          tenantId,
          blanked.rows.map((r) => r.seq),
          blanked.rows.map((r) => JSON.stringify(this.#authOf(key, tenantId, { seq: Number(r.seq), changeId: r.change_id, origin: r.origin, body: erased }))),
        ],
      );
    }
    const live = [...finalState].filter(([, f]) => f.body.kind === 'user.upsert');
    if (live.length > 0) {
      const up = live.map(([, f]) => f.body as UserUpsert);
      await db.query(
        `INSERT INTO hub_users (tenant_id, external_user_id, version, deleted, model, key_version, template, templates, seq)
         SELECT $1, u, v, false, m, k, t::jsonb, f::jsonb, s FROM unnest($2::text[], $3::int[], $4::text[], $5::int[], $6::text[], $7::text[], $8::bigint[]) AS x(u, v, m, k, t, f, s)
         ON CONFLICT (tenant_id, external_user_id) DO UPDATE SET version = excluded.version, deleted = false, model = excluded.model,
           key_version = excluded.key_version, template = excluded.template, templates = excluded.templates, seq = excluded.seq, updated_at = now(),
           created_at = CASE WHEN hub_users.deleted THEN now() ELSE hub_users.created_at END`,
        [
          tenantId,
          up.map((b) => b.external_user_id),
          up.map((b) => b.version),
          up.map((b) => b.model),
          up.map((b) => b.key_version),
          up.map((b) => JSON.stringify(b.template)),
          up.map((b) => JSON.stringify(b.templates ?? [])),
          live.map(([, f]) => f.seq),
        ],
      );
    }
    const gone = [...finalState].filter(([, f]) => f.body.kind === 'user.delete');
    if (gone.length > 0) {
      await db.query(
        `INSERT INTO hub_users (tenant_id, external_user_id, version, deleted, seq)
         SELECT $1, u, v, true, s FROM unnest($2::text[], $3::int[], $4::bigint[]) AS x(u, v, s)
         ON CONFLICT (tenant_id, external_user_id) DO UPDATE SET version = excluded.version, deleted = true, model = NULL, key_version = NULL, template = NULL, templates = '[]', groups = '[]', pin = NULL, seq = excluded.seq`,
        [tenantId, gone.map(([u]) => u), gone.map(([, f]) => f.version), gone.map(([, f]) => f.seq)],
      );
    }
    await db.query('UPDATE hub_tenants SET next_seq = $2 WHERE tenant_id = $1', [tenantId, next]);
    // every sequenced result, and a retry of one sequenced earlier in this batch, gets its change
    return batch.map((item, i) => {
      const r = results[i];
      return r.status === 'sequenced' ? { ...r, change: known.get(item.changeId) as Change } : r;
    });
  }

  /**
   * Templates sealed under an older version of the tenant key (a door that had not yet received the
   * new one, or a check made just before a rotation) are re-sealed under the current version before
   * they are sequenced: a device revoked by that rotation cannot read any later change.
   */
  async #sealedUnder(key: TenantKey, tenantId: string, batch: readonly PendingAppend[]): Promise<readonly PendingAppend[]> {
    const older = (b: SubmittedChange) =>
      (b.kind === 'user.upsert' && b.key_version < key.keyVersion) || (b.kind !== 'user.delete' && (b.templates ?? []).some((t) => t.key_version < key.keyVersion));
    if (!batch.some((b) => older(b.body))) return batch;
    const out: PendingAppend[] = [];
    for (const item of batch) {
      const body = item.body;
      if (body.kind === 'user.delete' || !older(body)) {
        out.push(item);
        continue;
      }
      const person = { externalUserId: body.external_user_id, version: body.version };
      const to = { version: body.version, key };
      const templates = body.templates && (await this.resealTemplates(tenantId, person, body.templates, to));
      if (body.kind === 'user.templates') {
        out.push({ ...item, body: { ...body, templates: templates ?? [] } });
        continue;
      }
      // a first template unreadable here stays as it is: the doors refuse it as they would have
      const [first] = await this.resealTemplates(tenantId, person, [{ model: body.model, key_version: body.key_version, template: body.template }], to);
      const resealed: UserUpsert = first ? { ...body, key_version: first.key_version, template: first.template } : body;
      out.push({ ...item, body: templates ? { ...resealed, templates } : resealed });
    }
    return out;
  }

  /**
   * A person's templates sealed for `to` (another version, or the tenant key's current version);
   * one already sealed so is kept as it is, and one that does not open here is left out.
   */
  async resealTemplates(tenantId: string, person: { externalUserId: string; version: number }, templates: readonly ModelTemplate[], to: { version: number; key: TenantKey }): Promise<ModelTemplate[]> {
    const out: ModelTemplate[] = [];
    for (const t of templates) {
      if (person.version === to.version && t.key_version === to.key.keyVersion) {
        out.push(t);
        continue;
      }
      const from = await this.keys.version(tenantId, t.key_version);
      if (!from) continue;
      const binding = { tenantId, externalUserId: person.externalUserId, model: t.model };
      try {
        const template = resealTemplate(t.template, { key: from.key, binding: { ...binding, version: person.version, keyVersion: t.key_version } }, { key: to.key.key, binding: { ...binding, version: to.version, keyVersion: to.key.keyVersion } });
        out.push({ model: t.model, key_version: to.key.keyVersion, template });
      } catch (err) {
        if (!(err instanceof EnvelopeError)) throw err;
      }
    }
    return out;
  }

  /**
   * Sequences a change made at the hub (a tenant's settings, a person's groups or PIN) and applies
   * it to the central state, in `db`'s transaction. The tenant's counter row is locked first, as
   * everywhere. A person's groups and PIN are set only while they are enrolled. `made` names a
   * door's change the hub sequences for it (a PIN set there): its change_id and origin.
   */
  async appendAdmin(db: pg.PoolClient, tenantId: string, body: AdminChange, made: { changeId: string; origin: string } = { changeId: crypto.randomUUID(), origin: 'hub' }): Promise<Change> {
    const counter = await db.query<{ next_seq: string }>('SELECT next_seq FROM hub_tenants WHERE tenant_id = $1 FOR UPDATE', [tenantId]);
    if (counter.rowCount === 0) throw new HubError(`no tenant ${tenantId} at the hub (authface hub tenant add)`);
    const seq = Number(counter.rows[0].next_seq);
    const key = await this.keys.current(tenantId, db);
    if (body.kind === 'tenant.settings') {
      await db.query('UPDATE hub_tenants SET name = $2, allowed_origins = $3::jsonb, liveness_mode = $4, pad_threshold = $5 WHERE tenant_id = $1', [
        tenantId,
        body.name,
        JSON.stringify(body.allowed_origins),
        body.liveness_mode,
        body.pad_threshold ?? null,
      ]);
    } else {
      const [column, value] = body.kind === 'user.groups' ? ['groups', JSON.stringify(body.groups)] : ['pin', body.pin && JSON.stringify(body.pin)];
      const r = await db.query(`UPDATE hub_users SET ${column} = $3::jsonb WHERE tenant_id = $1 AND external_user_id = $2 AND NOT deleted`, [tenantId, body.external_user_id, value]);
      if (r.rowCount === 0) throw new HubError(`${body.external_user_id} is not enrolled in tenant ${tenantId}`);
    }
    const { changeId, origin } = made;
    const auth = this.#authOf(key, tenantId, { seq, changeId, origin, body });
    // a device of an earlier release cannot read a PIN change: it takes its place as user.erased
    const blankAuth = body.kind === 'user.pin' ? this.#authOf(key, tenantId, { seq, changeId, origin, body: { kind: 'user.erased' } }) : null;
    const inserted = await db.query<ChangeRow>(
      `INSERT INTO hub_changes (tenant_id, seq, change_id, origin, kind, external_user_id, body, auth, blank_auth) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb) RETURNING *`,
      [tenantId, seq, changeId, origin, body.kind, body.kind === 'tenant.settings' ? '' : body.external_user_id, JSON.stringify(body), JSON.stringify(auth), blankAuth && JSON.stringify(blankAuth)],
    );
    await db.query('UPDATE hub_tenants SET next_seq = $2 WHERE tenant_id = $1', [tenantId, seq + 1]);
    return toChange(inserted.rows[0]);
  }

  /**
   * Sets or removes a person's PIN (a verifier sealed under the tenant key's current version);
   * sequenced for the devices. A retry of a door's change_id gets the change it was sequenced as.
   * Refused: a person not enrolled, a verifier sealed under an older key version (a device revoked
   * since could open it), and the removal of a PIN the person does not have (`pin_not_found`).
   * `auditedAs` records it in the hub's audit trail in the same transaction, naming who did it (the
   * hub's API records its own).
   */
  async setPin(
    tenantId: string,
    externalUserId: string,
    pin: FleetPin | null,
    options: { made?: { changeId: string; origin: string }; auditedAs?: string } = {},
  ): Promise<{ change: Change } | { refused: 'user_not_found' | 'stale_key' | 'pin_not_found' }> {
    const { made, auditedAs } = options;
    return this.#transaction(async (db) => {
      if (!(await this.lockTenant(db, tenantId))) throw new HubError(`no tenant ${tenantId} at the hub (authface hub tenant add)`);
      const earlier = made && (await this.sequenced(tenantId, made.changeId));
      if (earlier) return { change: earlier };
      const r = await db.query<{ pin: FleetPin | null }>('SELECT pin FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2 AND NOT deleted FOR UPDATE', [tenantId, externalUserId]);
      if (!r.rows[0]) return { refused: 'user_not_found' };
      if (pin && pin.key_version !== (await this.keys.current(tenantId, db)).keyVersion) return { refused: 'stale_key' };
      if (!pin && !r.rows[0].pin) return { refused: 'pin_not_found' };
      const change = await this.appendAdmin(db, tenantId, { kind: 'user.pin', external_user_id: externalUserId, pin }, made);
      if (auditedAs !== undefined) {
        await db.query(
          `INSERT INTO hub_audit_events (tenant_id, id, type, flow, session_id, external_user_id, result, reason, score, factor, door_id)
           VALUES ($1, $2, $3, NULL, NULL, $4, 'success', $5, NULL, 'face+pin', NULL)`,
          [tenantId, newEventId(), pin ? 'pin_set' : 'pin_removed', externalUserId, `by ${auditedAs}`],
        );
      }
      return { change };
    });
  }

  /** Changes a tenant's settings (what is not given stays); sequenced for the devices. */
  async updateTenantSettings(tenantId: string, changes: Partial<Omit<TenantSettings, 'kind' | 'pad_threshold'>> & { pad_threshold?: number | null }): Promise<Change> {
    return this.#transaction(async (db) => {
      await this.lockTenant(db, tenantId);
      const r = await db.query<{ name: string; allowed_origins: string[]; liveness_mode: 'passive' | 'active'; pad_threshold: number | null }>(
        'SELECT name, allowed_origins, liveness_mode, pad_threshold FROM hub_tenants WHERE tenant_id = $1',
        [tenantId],
      );
      if (!r.rows[0]) throw new HubError(`no tenant ${tenantId} at the hub (authface hub tenant add)`);
      const { pad_threshold: held, ...current } = r.rows[0];
      // null takes the tenant's own floor away (its doors use theirs again)
      const pad = changes.pad_threshold === undefined ? held : changes.pad_threshold;
      const settings: Omit<TenantSettings, 'kind'> = {
        name: changes.name ?? current.name,
        allowed_origins: changes.allowed_origins ?? current.allowed_origins,
        liveness_mode: changes.liveness_mode ?? current.liveness_mode,
        ...(pad === null ? {} : { pad_threshold: pad }),
      };
      return this.appendAdmin(db, tenantId, { kind: 'tenant.settings', ...settings });
    });
  }

  /** Puts a person in a group or takes them out; null when nothing changed (nothing sequenced). */
  async changeGroup(tenantId: string, externalUserId: string, group: string, member: boolean): Promise<Change | null> {
    return this.#transaction(async (db) => {
      await this.lockTenant(db, tenantId);
      const r = await db.query<{ groups: string[] }>('SELECT groups FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2 AND NOT deleted FOR UPDATE', [tenantId, externalUserId]);
      if (!r.rows[0]) throw new HubError(`${externalUserId} is not enrolled in tenant ${tenantId}`);
      const current = r.rows[0].groups;
      if (current.includes(group) === member) return null;
      if (member && current.length >= MAX_GROUPS_PER_USER) throw new HubError(`${externalUserId} is already in ${MAX_GROUPS_PER_USER} groups, the most a person can be in`);
      const groups = member ? [...current, group].sort() : current.filter((g) => g !== group);
      return this.appendAdmin(db, tenantId, { kind: 'user.groups', external_user_id: externalUserId, groups });
    });
  }

  /** The tenant's people in a group (or every person with their groups). */
  async groupMembers(tenantId: string): Promise<{ externalUserId: string; groups: string[] }[]> {
    const r = await this.pool.query<{ external_user_id: string; groups: string[] }>(
      `SELECT external_user_id, groups FROM hub_users WHERE tenant_id = $1 AND NOT deleted AND groups <> '[]' ORDER BY external_user_id COLLATE "C"`,
      [tenantId],
    );
    return r.rows.map((u) => ({ externalUserId: u.external_user_id, groups: u.groups }));
  }

  /** The digest of the tenant's live users, versions and groups at the hub (the devices compute the same). */
  async digest(tenantId: string): Promise<string> {
    return this.#digest(this.pool, tenantId);
  }

  async #digest(db: pg.Pool | pg.PoolClient, tenantId: string): Promise<string> {
    const r = await db.query<{ external_user_id: string; version: number; groups: string[] }>('SELECT external_user_id, version, groups FROM hub_users WHERE tenant_id = $1 AND NOT deleted', [tenantId]);
    return userSetDigest(r.rows.map((u) => [u.external_user_id, u.version, u.groups]));
  }

  /** The tenant's head and the digest of its people at it, read in one snapshot of the database. */
  async headDigest(tenantId: string): Promise<{ head: number; digest: string }> {
    const db = await this.pool.connect();
    try {
      await db.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const t = await db.query<{ next_seq: string }>('SELECT next_seq FROM hub_tenants WHERE tenant_id = $1', [tenantId]);
      const digest = await this.#digest(db, tenantId);
      await db.query('COMMIT');
      return { head: t.rows[0] ? Number(t.rows[0].next_seq) - 1 : 0, digest };
    } catch (err) {
      await db.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      db.release();
    }
  }

  /** Stores door events once each (a resent event is already there); returns the ids now held. */
  async recordDoorEvents(tenantId: string, batch: DoorEvents): Promise<string[]> {
    await this.#transaction(async (db) => {
      for (const e of batch.events) {
        await db.query(
          `INSERT INTO hub_access_events (tenant_id, event_id, device_id, door_id, type, result, reason, external_user_id, score, factor, occurred_at, delayed)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (tenant_id, event_id) DO NOTHING`,
          [tenantId, e.event_id, batch.device_id, e.door_id, e.type, e.result, e.reason, e.external_user_id, e.score, e.factor, e.time, e.delayed],
        );
      }
    });
    return batch.events.map((e) => e.event_id);
  }

  /**
   * One chunk of the tenant's live users after `after` (byte order), with the head read before
   * them: a device that applies every chunk and then the log after the first chunk's head holds
   * exactly the hub's users (a row read later than the head is replayed by the log, in order).
   * The first chunk carries the tenant's settings, read with the head. A chunk whose users would
   * pass MAX_CHUNK_BYTES ends early (its `next` is its last user).
   */
  async snapshotChunk(
    tenantId: string,
    after: string | null,
    limit: number,
    takes: { models?: readonly string[]; pins?: boolean } = {},
  ): Promise<{ seq: number; users: SnapshotUser[]; next: string | null; tenant?: Omit<TenantSettings, 'kind'> }> {
    const head = await this.pool.query<{ next_seq: string; name: string; allowed_origins: string[]; liveness_mode: 'passive' | 'active'; pad_threshold: number | null }>(
      'SELECT next_seq, name, allowed_origins, liveness_mode, pad_threshold FROM hub_tenants WHERE tenant_id = $1',
      [tenantId],
    );
    const t = head.rows[0];
    const seq = t ? Number(t.next_seq) - 1 : 0;
    const r = await this.pool.query<SnapshotUser & { groups: string[]; pin: FleetPin | null }>(
      `SELECT external_user_id, version, model, key_version, template, groups, CASE WHEN $5 THEN pin END AS pin,
              ${FURTHER_TEMPLATES_SQL("jsonb_build_object('templates', templates)", '$4')}->'templates' AS templates
       FROM hub_users WHERE tenant_id = $1 AND NOT deleted AND external_user_id COLLATE "C" > $2
       ORDER BY external_user_id COLLATE "C" LIMIT $3`,
      // ids are never empty: '' is before the first (and keeps the condition an index range)
      [tenantId, after ?? '', limit, takes.models ?? [], takes.pins === true],
    );
    const users: SnapshotUser[] = [];
    let bytes = 0;
    for (const { groups, templates, pin, ...u } of r.rows) {
      const user = { ...u, ...(templates ? { templates } : {}), ...(groups.length > 0 ? { groups } : {}), ...(pin ? { pin } : {}) };
      bytes += JSON.stringify(user).length;
      if (bytes > MAX_CHUNK_BYTES && users.length > 0) break;
      users.push(user);
    }
    const full = users.length === limit || users.length < r.rows.length;
    const tenant =
      after === null && t ? { name: t.name, allowed_origins: t.allowed_origins, liveness_mode: t.liveness_mode, ...(t.pad_threshold === null ? {} : { pad_threshold: t.pad_threshold }) } : undefined;
    return { seq, users, next: full ? users[users.length - 1].external_user_id : null, ...(tenant ? { tenant } : {}) };
  }

  /** Where the tenant's log starts: changes at or below it may have been compacted away. */
  async compactedSeq(tenantId: string): Promise<number> {
    const r = await this.pool.query<{ compacted_seq: string }>('SELECT compacted_seq FROM hub_tenants WHERE tenant_id = $1', [tenantId]);
    return r.rows[0] ? Number(r.rows[0].compacted_seq) : 0;
  }

  /**
   * Tombstone retention: removes each tenant's changes committed before `cutoff` (deletions too,
   * and with them the last rows naming a deleted person in the log). A device whose cursor is
   * behind what was removed loads a snapshot. Returns the changes removed.
   */
  async compact(cutoff: Date): Promise<number> {
    return this.#transaction(async (db) => {
      const removed = await db.query<{ tenant_id: string; seq: string }>('DELETE FROM hub_changes WHERE committed_at < $1 RETURNING tenant_id, seq', [cutoff]);
      const upTo = new Map<string, number>();
      for (const r of removed.rows) upTo.set(r.tenant_id, Math.max(upTo.get(r.tenant_id) ?? 0, Number(r.seq)));
      for (const [tenantId, seq] of upTo) await db.query('UPDATE hub_tenants SET compacted_seq = GREATEST(compacted_seq, $2) WHERE tenant_id = $1', [tenantId, seq]);
      return removed.rowCount ?? 0;
    });
  }

  /**
   * Locks the tenant's counter row in `db`'s transaction (false: there is no such tenant). Every transaction that sequences takes
   * it first (group commit does), so one that also reads a person before sequencing (the hub's
   * API) takes it before that read: the same order everywhere, no deadlock.
   */
  async lockTenant(db: pg.PoolClient, tenantId: string): Promise<boolean> {
    return ((await db.query('SELECT 1 FROM hub_tenants WHERE tenant_id = $1 FOR UPDATE', [tenantId])).rowCount ?? 0) > 0;
  }

  /**
   * The last template (an upsert) of the tenant's log after `seq`, or 0. Called with the tenant
   * locked, so nothing can be sequenced between this read and the caller's own change.
   */
  async lastTemplateAfter(db: pg.PoolClient, tenantId: string, seq: number): Promise<number> {
    const r = await db.query<{ seq: string | null }>(`SELECT MAX(seq) AS seq FROM hub_changes WHERE tenant_id = $1 AND seq > $2 AND kind = 'user.upsert'`, [tenantId, seq]);
    return Number(r.rows[0].seq ?? 0);
  }

  async hasTenant(tenantId: string): Promise<boolean> {
    return ((await this.pool.query('SELECT 1 FROM hub_tenants WHERE tenant_id = $1', [tenantId])).rowCount ?? 0) > 0;
  }

  /** A person's version at the hub and whether that is a tombstone; undefined for someone never seen. */
  async userState(db: pg.Pool | pg.PoolClient, tenantId: string, externalUserId: string): Promise<{ version: number; deleted: boolean } | undefined> {
    const r = await db.query<{ version: number; deleted: boolean }>('SELECT version, deleted FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2', [tenantId, externalUserId]);
    return r.rows[0];
  }

  /** The change a change_id was sequenced as, if it was. */
  async sequenced(tenantId: string, changeId: string): Promise<Change | undefined> {
    const r = await this.pool.query<ChangeRow>('SELECT * FROM hub_changes WHERE tenant_id = $1 AND change_id = $2', [tenantId, changeId]);
    return r.rows[0] && toChange(r.rows[0]);
  }

  /** The tenant's changes after `afterSeq`, in order (a device's backfill of a gap). */
  async changesAfter(tenantId: string, afterSeq: number, limit = 500): Promise<Change[]> {
    const rows = await this.pool.query<ChangeRow>('SELECT * FROM hub_changes WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3', [tenantId, afterSeq, limit]);
    return rows.rows.map(toChange);
  }

  /**
   * The same as changesAfter, as the JSON text of the array, built by PostgreSQL: a device's
   * backfill is relayed without the hub parsing and re-serialising every change.
   */
  async changesAfterJson(tenantId: string, afterSeq: number, limit: number, takes: { models?: readonly string[]; pins?: boolean } = {}): Promise<{ json: string; count: number; last: number }> {
    // a device of an earlier release (no models named) gets no further templates and no tenant
    // anti-spoofing floor, and one that takes no PINs each user.pin as user.erased; a range that
    // carries templates ends early before MAX_CHUNK_BYTES (its first change always goes)
    const r = await this.pool.query<{ json: string; count: number; last: string | null }>(
      `SELECT COALESCE(json_agg(c ORDER BY seq), '[]')::text AS json, COUNT(*)::int AS count, MAX(seq) AS last FROM (
         SELECT seq, c, SUM(octet_length(c::text)) OVER (ORDER BY seq) AS upto, row_number() OVER (ORDER BY seq) AS n FROM (
           SELECT seq, CASE WHEN kind = 'user.pin' AND NOT $6 THEN jsonb_build_object('kind', 'user.erased', 'tenant_id', tenant_id, 'seq', seq, 'change_id', change_id, 'origin', origin,
                  'committed_at', to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), 'auth', blank_auth)
                  ELSE (body - 'templates' - CASE WHEN cardinality($4::text[]) = 0 THEN 'pad_threshold' ELSE '' END) || ${FURTHER_TEMPLATES_SQL('body', '$4')} || jsonb_build_object('tenant_id', tenant_id, 'seq', seq, 'change_id', change_id, 'origin', origin,
                  'committed_at', to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), 'auth', auth) END AS c
           FROM hub_changes WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) AS rows) AS page
       WHERE n = 1 OR upto <= $5`,
      [tenantId, afterSeq, limit, takes.models ?? [], MAX_CHUNK_BYTES, takes.pins === true],
    );
    return { json: r.rows[0].json, count: r.rows[0].count, last: Number(r.rows[0].last ?? afterSeq) };
  }

  /** Every tenant's last sequence number. */
  async heads(): Promise<{ tenantId: string; seq: number }[]> {
    const r = await this.pool.query<{ tenant_id: string; seq: string }>('SELECT tenant_id, next_seq - 1 AS seq FROM hub_tenants');
    return r.rows.map((h) => ({ tenantId: h.tenant_id, seq: Number(h.seq) }));
  }

  /**
   * An event of the hub's own audit trail that an admin must see (the console's activity lists it):
   * never a person's face or template, and a deleted person's id is not kept.
   */
  async recordAlarm(tenantId: string, type: string, reason: string): Promise<void> {
    await this.pool.query(
      `INSERT INTO hub_audit_events (tenant_id, id, type, flow, session_id, external_user_id, result, reason, score, factor, door_id)
       VALUES ($1, $2, $3, NULL, NULL, NULL, 'alarm', $4, NULL, NULL, NULL)`,
      [tenantId, newEventId(), type, reason],
    );
  }

  /** The change_id of the tenant's change at `seq`; null when the log holds none there (beyond its head, or compacted). */
  async changeIdAt(tenantId: string, seq: number): Promise<string | null> {
    const r = await this.pool.query<{ change_id: string }>('SELECT change_id FROM hub_changes WHERE tenant_id = $1 AND seq = $2', [tenantId, seq]);
    return r.rows[0]?.change_id ?? null;
  }

  /** The last sequence number given in the tenant (0 before the first change). */
  async headSeq(tenantId: string): Promise<number> {
    const r = await this.pool.query<{ next_seq: string }>('SELECT next_seq FROM hub_tenants WHERE tenant_id = $1', [tenantId]);
    return r.rows[0] ? Number(r.rows[0].next_seq) - 1 : 0;
  }

  async conflicts(tenantId: string): Promise<{ changeId: string; origin: string; externalUserId: string; reason: string }[]> {
    const r = await this.pool.query<{ change_id: string; origin: string; external_user_id: string; reason: string }>(
      'SELECT change_id, origin, external_user_id, reason FROM hub_conflicts WHERE tenant_id = $1 AND resolved_at IS NULL ORDER BY recorded_at',
      [tenantId],
    );
    return r.rows.map((c) => ({ changeId: c.change_id, origin: c.origin, externalUserId: c.external_user_id, reason: c.reason }));
  }

  /** What a running hub recorded of itself (`public_url`), or undefined. */
  async setting(key: 'public_url'): Promise<string | undefined> {
    const r = await this.pool.query<{ value: string }>('SELECT value FROM hub_settings WHERE key = $1', [key]);
    return r.rows[0]?.value;
  }

  async recordSetting(key: 'public_url', value: string): Promise<void> {
    await this.pool.query('INSERT INTO hub_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  async #migrate(): Promise<void> {
    await this.pool.query('CREATE TABLE IF NOT EXISTS hub_schema (version integer NOT NULL)');
    for (let v = 0; v < MIGRATIONS.length; v++) {
      await this.#transaction(async (db) => {
        // one hub migrates at a time; the others wait here and find the work done
        await db.query('LOCK TABLE hub_schema IN EXCLUSIVE MODE');
        const done = await db.query<{ version: number }>('SELECT version FROM hub_schema');
        const at = done.rows[0]?.version ?? 0;
        if (at > v) return;
        await db.query(MIGRATIONS[v]);
        if (done.rowCount === 0) await db.query('INSERT INTO hub_schema (version) VALUES ($1)', [v + 1]);
        else await db.query('UPDATE hub_schema SET version = $1', [v + 1]);
      });
    }
  }

  /** Runs `run` in one transaction on one connection: committed if it returns, rolled back if it throws. */
  async transaction<T>(run: (db: pg.PoolClient) => Promise<T>): Promise<T> {
    return this.#transaction(run);
  }

  async #transaction<T>(run: (db: pg.PoolClient) => Promise<T>): Promise<T> {
    const db = await this.pool.connect();
    const committed: (() => void)[] = [];
    this.#afterCommit.set(db, committed);
    try {
      await db.query('BEGIN');
      const result = await run(db);
      await db.query('COMMIT');
      for (const done of committed) done();
      return result;
    } catch (err) {
      await db.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      this.#afterCommit.delete(db);
      db.release();
    }
  }
}

interface ChangeRow {
  tenant_id: string;
  seq: string;
  change_id: string;
  origin: string;
  body: ChangeBody;
  committed_at: Date;
  auth: MessageAuth;
}

/**
 * SQL of `{"templates": [...]}` with the further templates of `holder` (a jsonb with a `templates`
 * member) made by the models in the text[] parameter `models`, or `{}` when there are none.
 */
function FURTHER_TEMPLATES_SQL(holder: string, models: string): string {
  return `COALESCE((SELECT jsonb_build_object('templates', jsonb_agg(t)) FROM jsonb_array_elements(COALESCE(${holder}->'templates', '[]')) AS t WHERE t->>'model' = ANY(${models}::text[]) HAVING COUNT(*) > 0), '{}')`;
}

function toChange(row: ChangeRow): Change {
  return { ...row.body, tenant_id: row.tenant_id, seq: Number(row.seq), change_id: row.change_id, origin: row.origin, committed_at: row.committed_at.toISOString(), auth: row.auth };
}
