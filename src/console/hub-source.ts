import { isModelId } from '../biometrics/matchers/index.ts';
import { resolveConflict } from '../hub/conflicts.ts';
import { setPinAtHub } from '../hub/pins.ts';
import { HubError } from '../hub/errors.ts';
import type { HubStore } from '../hub/store.ts';
import type { Change } from '../sync/protocol.ts';
import { FORGET_AFTER_MS, type SignInThrottle, waitAfter } from './signin-throttle.ts';
import type { ActivityFilter, ConsoleDevice, ConsoleEvent, ConsoleSource } from './source.ts';

/** A signed command to a door through the hub (hub/commands.ts): unlock, or show a capture link on its screen. */
export type HubCommand = (tenantId: string, deviceId: string, doorId: string, biometryUrl?: string) => Promise<{ ok: boolean; error: string | null }>;

interface EventRow {
  id: string;
  device_id: string;
  door_id: string | null;
  type: string;
  result: string | null;
  reason: string | null;
  external_user_id: string | null;
  time: Date;
}

const toEvent = (r: EventRow): ConsoleEvent => ({
  id: r.id,
  deviceId: r.device_id,
  doorId: r.door_id,
  type: r.type,
  result: r.result,
  reason: r.reason,
  externalUserId: r.external_user_id,
  time: r.time.toISOString(),
});

/** Door events as the devices sent them, and the hub's own audit trail, in one shape. */
const ACTIVITY = `
  SELECT event_id AS id, device_id, door_id, type, result, reason, external_user_id, received_at AS time
  FROM hub_access_events WHERE tenant_id = $1
  UNION ALL
  SELECT id, 'hub' AS device_id, door_id, type, result, reason, external_user_id, created_at AS time
  FROM hub_audit_events WHERE tenant_id = $1`;

/** The console at the hub: every tenant, every device of each, from the hub's database. */
export function hubConsoleSource(store: HubStore, command: HubCommand, publish: (change: Change) => void = () => undefined): ConsoleSource {
  const { pool } = store;
  return {
    scope: 'hub',
    signIns: postgresSignInThrottle(store),
    async tenants() {
      const r = await pool.query<{ tenant_id: string; name: string }>('SELECT tenant_id, name FROM hub_tenants ORDER BY name, tenant_id');
      return r.rows.map((t) => ({ id: t.tenant_id, name: t.name }));
    },
    async devices(tenantId) {
      const head = await store.headSeq(tenantId);
      const r = await pool.query<{ device_id: string; state: string; applied_seq: string; diverged: boolean; version: string | null; model: string | null; last_seen: Date; users: number | null; revoked_at: Date | null; boot: number | null }>(
        'SELECT device_id, state, applied_seq, diverged, version, model, last_seen, users, revoked_at, boot FROM hub_devices WHERE tenant_id = $1 ORDER BY device_id',
        [tenantId],
      );
      return r.rows.map(
        (d): ConsoleDevice => ({
          deviceId: d.device_id,
          state: d.revoked_at ? 'revoked' : d.boot === null && d.state === 'offline' ? 'never_seen' : d.state === 'online' ? 'online' : 'offline',
          lag: head - Number(d.applied_seq),
          diverged: d.diverged,
          version: d.version,
          model: d.model,
          lastSeen: d.boot === null ? null : d.last_seen.toISOString(),
          users: d.revoked_at ? 0 : d.users,
        }),
      );
    },
    async modelCoverage(tenantId) {
      // a person's first template is the fleet model's (hub_users.model), the further ones are in `templates`
      const r = await pool.query<{ people: number; by_model: Record<string, number> | null }>(
        `SELECT COUNT(*)::int AS people,
                (SELECT jsonb_object_agg(model, n) FROM (
                   SELECT m.model, COUNT(DISTINCT u2.external_user_id)::int AS n
                   FROM hub_users u2, LATERAL (SELECT u2.model UNION SELECT t->>'model' FROM jsonb_array_elements(u2.templates) t) m (model)
                   WHERE u2.tenant_id = $1 AND NOT u2.deleted AND m.model IS NOT NULL GROUP BY m.model) per_model) AS by_model
         FROM hub_users WHERE tenant_id = $1 AND NOT deleted`,
        [tenantId],
      );
      const { people, by_model } = r.rows[0];
      return { people, byModel: Object.fromEntries(Object.entries(by_model ?? {}).filter(([model]) => isModelId(model))) };
    },
    async doors(tenantId) {
      const r = await pool.query<{ device_id: string; doors: string[] | null }>('SELECT device_id, doors FROM hub_devices WHERE tenant_id = $1 AND revoked_at IS NULL ORDER BY device_id', [tenantId]);
      return r.rows.flatMap((d) => (d.doors ?? []).map((doorId) => ({ deviceId: d.device_id, doorId })));
    },
    async doorEventsSince(tenantId, since, limit) {
      const r = await pool.query<EventRow>(
        `SELECT event_id AS id, device_id, door_id, type, result, reason, external_user_id, received_at AS time
         FROM hub_access_events WHERE tenant_id = $1 AND date_trunc('milliseconds', received_at) > $2 ORDER BY received_at, event_id LIMIT $3`,
        [tenantId, since, limit],
      );
      return r.rows.map(toEvent);
    },
    unlock: (tenantId, deviceId, doorId) => command(tenantId, deviceId, doorId),
    openSession: (tenantId, deviceId, doorId, biometryUrl) => command(tenantId, deviceId, doorId, biometryUrl),
    async people(tenantId, query, limit) {
      const pattern = `%${query.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
      const total = await pool.query<{ n: number }>('SELECT COUNT(*)::int AS n FROM hub_users WHERE tenant_id = $1 AND NOT deleted AND external_user_id ILIKE $2', [tenantId, pattern]);
      const r = await pool.query<{ external_user_id: string; version: number; groups: string[]; updated_at: Date; held_by: string[]; pin: boolean }>(
        `SELECT u.external_user_id, u.version, u.groups, u.updated_at, u.pin IS NOT NULL AS pin,
                ARRAY(SELECT d.device_id FROM hub_devices d WHERE d.tenant_id = u.tenant_id AND d.revoked_at IS NULL AND d.applied_seq >= u.seq ORDER BY d.device_id) AS held_by
         FROM hub_users u WHERE u.tenant_id = $1 AND NOT u.deleted AND u.external_user_id ILIKE $2
         ORDER BY u.external_user_id COLLATE "C" LIMIT $3`,
        [tenantId, pattern, limit],
      );
      return {
        total: total.rows[0].n,
        people: r.rows.map((u) => ({ externalUserId: u.external_user_id, version: u.version, groups: u.groups, updatedAt: u.updated_at.toISOString(), heldBy: u.held_by, pin: u.pin })),
      };
    },
    async erasures(tenantId) {
      const r = await pool.query<{ external_user_id: string; applied: number; devices: number }>(
        `SELECT u.external_user_id,
                (SELECT COUNT(*)::int FROM hub_devices d WHERE d.tenant_id = u.tenant_id AND d.revoked_at IS NULL AND d.applied_seq >= u.seq) AS applied,
                (SELECT COUNT(*)::int FROM hub_devices d WHERE d.tenant_id = u.tenant_id AND d.revoked_at IS NULL) AS devices
         FROM hub_users u WHERE u.tenant_id = $1 AND u.deleted ORDER BY u.seq DESC LIMIT 100`,
        [tenantId],
      );
      return r.rows.map((e) => ({ externalUserId: e.external_user_id, applied: e.applied, devices: e.devices, complete: e.applied === e.devices }));
    },
    conflicts: (tenantId) => store.conflicts(tenantId),
    async resolveConflict(tenantId, changeId, resolution, admin) {
      try {
        publish(await resolveConflict(store, tenantId, changeId, resolution, admin));
        return { error: null };
      } catch (err) {
        if (err instanceof HubError) return { error: err.message };
        throw err;
      }
    },
    async setPin(tenantId, externalUserId, pin, admin) {
      const result = await setPinAtHub(store, tenantId, externalUserId, pin, `console ${admin}`);
      if ('refused' in result) return { error: result.refused === 'user_not_found' ? `${externalUserId} is not enrolled` : `${externalUserId} has no PIN` };
      publish(result.change);
      return { error: null };
    },
    async activity(tenantId, filter: ActivityFilter) {
      const where: string[] = [];
      const params: unknown[] = [tenantId];
      const add = (sql: string, value: unknown) => {
        params.push(value);
        where.push(sql.replace('?', `$${params.length}`));
      };
      if (filter.door) add('door_id = ?', filter.door);
      if (filter.person) add('external_user_id = ?', filter.person);
      if (filter.from) add('time >= ?', filter.from);
      if (filter.to) add('time < ?', filter.to);
      params.push(filter.limit);
      const r = await pool.query<EventRow>(
        `SELECT * FROM (${ACTIVITY}) AS a ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY time DESC, id DESC LIMIT $${params.length}`,
        params,
      );
      return r.rows.map(toEvent);
    },
    async admin(name) {
      const r = await pool.query<{ name: string; password_hash: string }>('SELECT name, password_hash FROM hub_admins WHERE name = $1', [name]);
      return r.rows[0] ? { name: r.rows[0].name, passwordHash: r.rows[0].password_hash } : null;
    },
    async createSession(tokenHash, session) {
      await pool.query('DELETE FROM hub_console_sessions WHERE expires_at < now()');
      await pool.query('INSERT INTO hub_console_sessions (token_hash, admin, csrf, expires_at) VALUES ($1, $2, $3, $4)', [tokenHash, session.admin, session.csrf, session.expiresAt]);
    },
    async session(tokenHash) {
      const r = await pool.query<{ admin: string; csrf: string; expires_at: Date }>('SELECT admin, csrf, expires_at FROM hub_console_sessions WHERE token_hash = $1 AND expires_at > now()', [tokenHash]);
      return r.rows[0] ? { admin: r.rows[0].admin, csrf: r.rows[0].csrf, expiresAt: r.rows[0].expires_at.toISOString() } : null;
    },
    async deleteSession(tokenHash) {
      await pool.query('DELETE FROM hub_console_sessions WHERE token_hash = $1', [tokenHash]);
    },
  };
}

/** Adds an admin of the console, or sets the password of one (`authface hub admin add`). */
export async function setHubAdmin(store: HubStore, name: string, passwordHash: string): Promise<'added' | 'updated'> {
  const r = await store.pool.query<{ added: boolean }>(
    'INSERT INTO hub_admins (name, password_hash) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash RETURNING (xmax = 0) AS added',
    [name, passwordHash],
  );
  // a new password ends the admin's open sessions
  if (!r.rows[0].added) await store.pool.query('DELETE FROM hub_console_sessions WHERE admin = $1', [name]);
  return r.rows[0].added ? 'added' : 'updated';
}

/** The sign-in throttle's counts in PostgreSQL, on the database's clock: every hub process sees one count. */
function postgresSignInThrottle(store: HubStore): SignInThrottle {
  const { pool } = store;
  const forget = `${FORGET_AFTER_MS / 1000} seconds`;
  return {
    async wait(name, address) {
      const r = await pool.query<{ failures: number; last_at: string; now: string }>(
        'SELECT failures, (extract(epoch FROM last_at) * 1000)::float8 AS last_at, (extract(epoch FROM now()) * 1000)::float8 AS now FROM hub_console_signins WHERE name = $1 AND address = $2',
        [name, address],
      );
      const row = r.rows[0];
      return row ? waitAfter(row.failures, Number(row.last_at), Number(row.now)) : 0;
    },
    async failed(name, address) {
      await pool.query(
        `INSERT INTO hub_console_signins AS s (name, address, failures, last_at) VALUES ($1, $2, 1, now())
         ON CONFLICT (name, address) DO UPDATE SET failures = CASE WHEN s.last_at < now() - $3::interval THEN 1 ELSE s.failures + 1 END, last_at = now()`,
        [name, address, forget],
      );
      // counts nobody has added to for a day are forgotten (names are the attacker's to choose)
      if (Math.random() < 0.01) await pool.query('DELETE FROM hub_console_signins WHERE last_at < now() - $1::interval', [forget]);
    },
    async succeeded(name, address) {
      await pool.query('DELETE FROM hub_console_signins WHERE name = $1 AND address = $2', [name, address]);
    },
  };
}
