import crypto from 'node:crypto';
import type pg from 'pg';
import { hashSecret } from '../core/secrets.ts';
import type { AuditEvent } from '../store/audit.ts';
import type { AuditInput, BiometryStore, FinishResult } from '../store/biometry-store.ts';
import type { Session } from '../store/sessions.ts';
import type { LivenessMode, Tenant } from '../store/tenants.ts';
import type { ActiveTemplate, User } from '../store/users.ts';
import { EnvelopeError, type SealedTemplate, openTemplate, sealTemplate } from '../sync/envelope.ts';
import type { Change, ModelTemplate, SubmittedChange } from '../sync/protocol.ts';
import { MATCHERS, type ModelId } from '../biometrics/matchers/index.ts';
import type { HubStore } from './store.ts';

/**
 * The hub's /biometry/v1 on PostgreSQL. Users and templates are the fleet's (hub_users, sealed
 * under the tenant key as on the wire): an enrolment, update or deletion made here is a change of
 * the tenant's log, sequenced in the same transaction as the session or audit event that made it,
 * so the doors learn it exactly as they learn a change from another door. Every row is keyed by
 * tenant_id first.
 */
export interface PostgresBiometryOptions {
  /** The model the hub decides and checks duplicates by: the fleet's (sync/fleet-model.ts). */
  model: ModelId;
  /**
   * Models an enrolment or update at the hub also makes a template of, sent to the doors with the
   * person's first template (the upsert's `templates`), so nobody enrolled here has to migrate.
   */
  furtherModels?: readonly ModelId[];
  /** Called after the commit of each change this store sequenced (to publish it on the log). */
  onSequenced?: (change: Change) => void;
}

const API_KEY_PREFIX = 'afk_';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

class Rollback extends Error {
  constructor(readonly result: FinishResult) {
    super(result);
  }
}

export function postgresBiometryStore(hub: HubStore, options: PostgresBiometryOptions): BiometryStore {
  const { pool } = hub;
  const open = async (tenantId: string, row: UserRow): Promise<Float32Array | undefined> => {
    if (!row.template || row.model === null || row.key_version === null) return undefined;
    const sealedWith = await hub.keys.version(tenantId, row.key_version);
    if (!sealedWith) return undefined;
    try {
      return openTemplate(sealedWith.key, row.template, { tenantId, externalUserId: row.external_user_id, version: row.version, model: row.model, keyVersion: row.key_version }, options.model);
    } catch (err) {
      if (err instanceof EnvelopeError) return undefined;
      throw err;
    }
  };
  const toUser = (tenantId: string, row: UserRow): User => ({
    id: `${tenantId}/${row.external_user_id}`,
    tenantId,
    externalUserId: row.external_user_id,
    version: row.version,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
    needsReenrolment: row.model !== options.model,
  });
  const liveUser = async (db: pg.Pool | pg.PoolClient, tenantId: string, externalUserId: string, lock = false) =>
    (await db.query<UserRow>(`SELECT * FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2 AND NOT deleted${lock ? ' FOR UPDATE' : ''}`, [tenantId, externalUserId])).rows[0];
  /** Sequences a change inside `db`'s transaction; the caller publishes it after the commit. */
  const sequence = async (db: pg.PoolClient, tenantId: string, body: SubmittedChange): Promise<Change> => {
    const result = await hub.appendWithin(db, tenantId, body, { origin: 'hub' });
    if (result.status !== 'sequenced') throw new Rollback('write_conflict');
    return result.change;
  };
  const insertAudit = async (db: pg.Pool | pg.PoolClient, e: AuditInput): Promise<AuditEvent> => {
    const r = await db.query<AuditRow>(
      `INSERT INTO hub_audit_events (tenant_id, id, type, flow, session_id, external_user_id, result, reason, score, factor, door_id)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *`,
      [e.tenantId, e.id ?? `evt_${crypto.randomUUID()}`, e.type, e.flow, e.sessionId, e.externalUserId, e.result, e.reason, e.score, e.factor ?? null, e.doorId ?? null],
    );
    return toAudit(r.rows[0]);
  };

  const further = options.furtherModels ?? [];
  return {
    models: MATCHERS.map((m) => m.id).filter((m) => m === options.model || further.includes(m)),
    learnsFromCaptures: false,
    tenants: {
      async create(input) {
        const id = input.id ?? crypto.randomUUID();
        const settings = await hub.createTenant(id, input.name, input);
        options.onSequenced?.(settings);
        return toTenant((await pool.query<TenantRow>('SELECT * FROM hub_tenants WHERE tenant_id = $1', [id])).rows[0]);
      },
      async get(id) {
        if (!UUID.test(id)) return undefined;
        const r = await pool.query<TenantRow>('SELECT * FROM hub_tenants WHERE tenant_id = $1', [id]);
        return r.rows[0] && toTenant(r.rows[0]);
      },
      async createKey(tenantId) {
        const keyId = `key_${crypto.randomUUID()}`;
        const apiKey = API_KEY_PREFIX + crypto.randomBytes(32).toString('base64url');
        await pool.query('INSERT INTO hub_api_keys (tenant_id, key_id, key_hash) VALUES ($1, $2, $3)', [tenantId, keyId, hashSecret(apiKey)]);
        return { keyId, apiKey };
      },
      async revokeKey(keyId) {
        const r = await pool.query('UPDATE hub_api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL', [keyId]);
        return r.rowCount === 1;
      },
      async findByApiKey(apiKey) {
        if (!apiKey.startsWith(API_KEY_PREFIX)) return undefined;
        const r = await pool.query<TenantRow>(
          'SELECT t.* FROM hub_api_keys k JOIN hub_tenants t ON t.tenant_id = k.tenant_id WHERE k.key_hash = $1 AND k.revoked_at IS NULL',
          [hashSecret(apiKey)],
        );
        return r.rows[0] && toTenant(r.rows[0]);
      },
    },

    sessions: {
      async create(input) {
        const r = await pool.query<SessionRow>(
          `INSERT INTO hub_sessions (tenant_id, id, client_state, flow, external_user_id, redirect_url, token_hash, status, created_at, expires_at, challenge, door_id, factor, candidates)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', now(), now() + make_interval(secs => $8), $9, $10, $11, $12)
           ON CONFLICT (tenant_id, client_state) DO NOTHING RETURNING *`,
          [
            input.tenantId,
            crypto.randomUUID(),
            input.clientState,
            input.flow,
            input.externalUserId,
            input.redirectUrl,
            input.tokenHash,
            input.ttlSeconds,
            input.challenge && JSON.stringify(input.challenge),
            input.doorId ?? null,
            input.candidates ? 'face+pin' : 'face',
            input.candidates ? JSON.stringify(input.candidates) : null,
          ],
        );
        return r.rows[0] && toSession(r.rows[0]);
      },
      async byId(tenantId, id) {
        if (!UUID.test(id)) return undefined;
        const r = await pool.query<SessionRow>('SELECT * FROM hub_sessions WHERE tenant_id = $1 AND id = $2', [tenantId, id]);
        return r.rows[0] && toSession(r.rows[0]);
      },
      async byClientState(tenantId, clientState) {
        const r = await pool.query<SessionRow>('SELECT * FROM hub_sessions WHERE tenant_id = $1 AND client_state = $2', [tenantId, clientState]);
        return r.rows[0] && toSession(r.rows[0]);
      },
      async byTokenHash(hash) {
        const r = await pool.query<SessionRow>('SELECT * FROM hub_sessions WHERE token_hash = $1', [hash]);
        return r.rows[0] && toSession(r.rows[0]);
      },
      async bind(tenantId, id) {
        const r = await pool.query(`UPDATE hub_sessions SET status = 'in_progress', bound_at = now() WHERE tenant_id = $1 AND id = $2 AND status = 'pending'`, [tenantId, id]);
        return r.rowCount === 1;
      },
      async dueForExpiry(limit = 500) {
        const r = await pool.query<SessionRow>(
          `SELECT * FROM hub_sessions WHERE status IN ('pending', 'in_progress') AND expires_at <= now() ORDER BY expires_at LIMIT $1`,
          [limit],
        );
        return r.rows.map(toSession);
      },
    },

    users: {
      async get(tenantId, externalUserId) {
        if (!UUID.test(tenantId)) return undefined;
        const row = await liveUser(pool, tenantId, externalUserId);
        return row && toUser(tenantId, row);
      },
      async list(tenantId, limit, offset) {
        const total = await pool.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM hub_users WHERE tenant_id = $1 AND NOT deleted', [tenantId]);
        const rows = await pool.query<UserRow>(
          'SELECT * FROM hub_users WHERE tenant_id = $1 AND NOT deleted ORDER BY created_at, external_user_id LIMIT $2 OFFSET $3',
          [tenantId, limit, offset],
        );
        return { total: total.rows[0].n, users: rows.rows.map((r) => toUser(tenantId, r)) };
      },
      async templates(user) {
        const row = await liveUser(pool, user.tenantId, user.externalUserId);
        const embedding = row && row.version === user.version ? await open(user.tenantId, row) : undefined;
        return embedding ? { [options.model]: embedding } : {};
      },
      async templateVersions(user) {
        // the log is the history: every template the person had since they were last deleted
        const r = await pool.query<{ version: number; committed_at: Date }>(
          `SELECT (body->>'version')::int AS version, committed_at FROM hub_changes
           WHERE tenant_id = $1 AND external_user_id = $2 AND kind = 'user.upsert' ORDER BY seq`,
          [user.tenantId, user.externalUserId],
        );
        return r.rows.map((t) => ({ version: t.version, active: t.version === user.version, createdAt: t.committed_at.toISOString() }));
      },
      async activeTemplates() {
        const out: ActiveTemplate[] = [];
        const rows = await pool.query<UserRow & { tenant_id: string }>('SELECT * FROM hub_users WHERE NOT deleted ORDER BY tenant_id');
        for (const row of rows.rows) {
          const embedding = await open(row.tenant_id, row);
          if (embedding) out.push({ tenantId: row.tenant_id, externalUserId: row.external_user_id, model: options.model, embedding });
        }
        return out;
      },
    },

    audit: {
      record: (event) => insertAudit(pool, event),
      async list(tenantId, limit = 100) {
        const r = await pool.query<AuditRow>('SELECT * FROM hub_audit_events WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2', [tenantId, limit]);
        return r.rows.map(toAudit);
      },
    },

    async finishSession(session, outcome, auditEvent, write) {
      const tenantId = session.tenantId;
      let change: Change | undefined;
      try {
        await hub.transaction(async (db) => {
          // a migration and a capture are a door's (learnsFromCaptures): the hub writes enrolments and updates
          if (write && write.kind !== 'migrate' && write.kind !== 'adapt') {
            const embedding = write.templates[options.model];
            if (!embedding) throw new Error(`the hub keeps ${options.model} templates, and the capture made none`);
            await hub.lockTenant(db, tenantId);
            // the key read under the tenant's lock: a rotation cannot slip between seal and sequence
            const sealed = await hub.keys.current(tenantId, db);
            const externalUserId = write.kind === 'enroll' ? write.externalUserId : write.user.externalUserId;
            // a template sequenced after what the decision's 1:N check saw (another hub process, a door)
            if (write.checkedThrough !== undefined && (await hub.lastTemplateAfter(db, tenantId, write.checkedThrough)) > 0) throw new Rollback('write_conflict');
            const row = await hub.userState(db, tenantId, externalUserId);
            const live = row && !row.deleted;
            if (write.kind === 'enroll' ? live : !live || row.version !== write.user.version) throw new Rollback('write_conflict');
            const version = (row?.version ?? 0) + 1;
            const binding = { tenantId, externalUserId, version, model: options.model, keyVersion: sealed.keyVersion };
            const templates: ModelTemplate[] = further.flatMap((model) => {
              const made = write.templates[model];
              return made ? [{ model, key_version: sealed.keyVersion, template: sealTemplate(sealed.key, made, { ...binding, model }) }] : [];
            });
            change = await sequence(db, tenantId, {
              kind: 'user.upsert',
              external_user_id: externalUserId,
              version,
              model: options.model,
              key_version: sealed.keyVersion,
              template: sealTemplate(sealed.key, embedding, binding),
              ...(templates.length > 0 ? { templates } : {}),
            });
          }
          const finished = await db.query(
            `UPDATE hub_sessions SET status = $3, reason = $4, score = $5, result_user_id = $6, event_id = $7, completed_at = now(), candidates = NULL
             WHERE tenant_id = $1 AND id = $2 AND status IN ('pending', 'in_progress')`,
            [tenantId, session.id, outcome.status, outcome.reason, outcome.score, outcome.resultUserId, outcome.eventId],
          );
          // another request finished it first: roll back whatever this decision wrote
          if (finished.rowCount !== 1) throw new Rollback('already_finished');
          await insertAudit(db, auditEvent);
        });
      } catch (err) {
        if (err instanceof Rollback) return err.result;
        throw err;
      }
      if (change) options.onSequenced?.(change);
      return 'finished';
    },

    async eraseUser(tenantId, externalUserId, audit) {
      if (!UUID.test(tenantId)) return null;
      let change: Change | undefined;
      const eventId = await hub.transaction(async (db) => {
        await hub.lockTenant(db, tenantId);
        const user = await liveUser(db, tenantId, externalUserId, true);
        if (!user) return null;
        // the deletion scrubs the person's id from the central rows (hub/store.ts)
        change = await sequence(db, tenantId, { kind: 'user.delete', external_user_id: externalUserId, version: user.version + 1 });
        return (await insertAudit(db, audit('erased'))).id;
      });
      if (change) options.onSequenced?.(change);
      return eventId;
    },

    async purgeBefore(cutoff) {
      return hub.transaction(async (db) => ({
        sessions: (await db.query('DELETE FROM hub_sessions WHERE completed_at IS NOT NULL AND completed_at < $1', [cutoff])).rowCount ?? 0,
        auditEvents: (await db.query('DELETE FROM hub_audit_events WHERE created_at < $1', [cutoff])).rowCount ?? 0,
      }));
    },
  };
}

interface TenantRow {
  tenant_id: string;
  name: string;
  liveness_mode: LivenessMode;
  pad_threshold: number | null;
  allowed_origins: string[];
  created_at: Date;
}

interface UserRow {
  external_user_id: string;
  version: number;
  model: string | null;
  key_version: number | null;
  template: SealedTemplate | null;
  created_at: Date;
  updated_at: Date;
}

interface SessionRow {
  tenant_id: string;
  id: string;
  client_state: string;
  flow: Session['flow'];
  external_user_id: string | null;
  redirect_url: string;
  status: Session['status'];
  reason: string | null;
  score: number | null;
  result_user_id: string | null;
  event_id: string | null;
  created_at: Date;
  expires_at: Date;
  bound_at: Date | null;
  completed_at: Date | null;
  challenge: Session['challenge'];
  door_id: string | null;
  factor: Session['factor'];
  candidates: string[] | null;
}

interface AuditRow {
  tenant_id: string;
  id: string;
  type: AuditEvent['type'];
  flow: string | null;
  session_id: string | null;
  external_user_id: string | null;
  result: string | null;
  reason: string | null;
  score: number | null;
  factor: AuditEvent['factor'];
  door_id: string | null;
  created_at: Date;
}

const iso = (d: Date | null) => d && d.toISOString();

function toTenant(r: TenantRow): Tenant {
  return {
    id: r.tenant_id,
    name: r.name,
    livenessMode: r.liveness_mode,
    ...(r.pad_threshold !== null ? { padThreshold: r.pad_threshold } : {}),
    allowedOrigins: r.allowed_origins,
    createdAt: r.created_at.toISOString(),
  };
}

function toSession(r: SessionRow): Session {
  return {
    id: r.id,
    tenantId: r.tenant_id,
    clientState: r.client_state,
    flow: r.flow,
    externalUserId: r.external_user_id,
    redirectUrl: r.redirect_url,
    status: r.status,
    reason: r.reason,
    score: r.score,
    resultUserId: r.result_user_id,
    eventId: r.event_id,
    createdAt: r.created_at.toISOString(),
    expiresAt: r.expires_at.toISOString(),
    boundAt: iso(r.bound_at),
    completedAt: iso(r.completed_at),
    challenge: r.challenge,
    doorId: r.door_id,
    factor: r.factor,
    candidates: r.candidates,
  };
}

function toAudit(r: AuditRow): AuditEvent {
  return {
    id: r.id,
    tenantId: r.tenant_id,
    type: r.type,
    flow: r.flow,
    sessionId: r.session_id,
    externalUserId: r.external_user_id,
    result: r.result,
    reason: r.reason,
    score: r.score,
    factor: r.factor,
    doorId: r.door_id,
    createdAt: r.created_at.toISOString(),
  };
}
