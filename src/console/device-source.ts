import type { AccessController } from '../access/controller.ts';
import type { KioskService } from '../access/kiosk.ts';
import { PRIMARY_MODEL, matcher } from '../biometrics/matchers/index.ts';
import type { DeviceConfig } from '../device/config.ts';
import type { Store } from '../store/index.ts';
import { MemorySignInThrottle } from './signin-throttle.ts';
import type { ActivityFilter, ConsoleEvent, ConsoleSource } from './source.ts';

interface AuditRow {
  id: string;
  type: string;
  result: string | null;
  reason: string | null;
  external_user_id: string | null;
  door_id: string | null;
  created_at: string;
}

const DOOR_EVENTS = `type IN ('access_decision', 'remote_unlock', 'door_alarm')`;

/**
 * The console on a device: the same pages, limited to this device (its tenants, its doors, its
 * people and its audit trail, from its SQLite database). A remote unlock here is the device's own
 * door controller, for an admin signed in on this device.
 */
export function deviceConsoleSource(deps: {
  config: DeviceConfig;
  store: Store;
  access: AccessController;
  kiosk: KioskService;
  version: string;
}): ConsoleSource {
  const { config, store, access, kiosk } = deps;
  const { db } = store;
  const deviceId = config.device_id;
  const toEvent = (r: AuditRow): ConsoleEvent => ({ id: r.id, deviceId, doorId: r.door_id, type: r.type, result: r.result, reason: r.reason, externalUserId: r.external_user_id, time: r.created_at });
  return {
    scope: 'device',
    // one process: the counts live in it
    signIns: new MemorySignInThrottle(),
    async tenants() {
      const rows = db.prepare('SELECT id, name FROM tenants ORDER BY name, id').all() as { id: string; name: string }[];
      // the tenant of the doors first
      return config.tenant_id ? [...rows.filter((t) => t.id === config.tenant_id), ...rows.filter((t) => t.id !== config.tenant_id)] : rows;
    },
    async devices(tenantId) {
      const { n } = db.prepare('SELECT COUNT(*) AS n FROM users WHERE tenant_id = ? AND deleted_at IS NULL').get(tenantId) as { n: number };
      // the console runs on the device itself: online; how far it is behind the hub is the hub's console's to say
      return [{ deviceId, state: 'online', lag: null, diverged: false, version: deps.version, model: matcher(PRIMARY_MODEL).name, lastSeen: new Date().toISOString(), users: n }];
    },
    async modelCoverage(tenantId) {
      return store.users.modelCoverage().find((c) => c.tenantId === tenantId) ?? { people: 0, byModel: {} };
    },
    async doors() {
      return config.doors.map((d) => ({ deviceId, doorId: d.id }));
    },
    async doorEventsSince(tenantId, since, limit) {
      const rows = db
        .prepare(`SELECT id, type, result, reason, external_user_id, door_id, created_at FROM audit_events WHERE tenant_id = ? AND ${DOOR_EVENTS} AND created_at > ? ORDER BY created_at, rowid LIMIT ?`)
        .all(tenantId, since, limit) as AuditRow[];
      return rows.map(toEvent);
    },
    async unlock(_tenantId, device, doorId) {
      if (device !== deviceId) return { ok: false, error: `this console opens the doors of ${deviceId} only` };
      return access.unlock(doorId, 'console') ? { ok: true, error: null } : { ok: false, error: `no door ${doorId}` };
    },
    async openSession(_tenantId, device, doorId, biometryUrl) {
      if (device !== deviceId) return { ok: false, error: `this console shows links on the doors of ${deviceId} only` };
      try {
        await kiosk.open(doorId, biometryUrl);
        return { ok: true, error: null };
      } catch (err) {
        return { ok: false, error: (err as Error).message };
      }
    },
    async people(tenantId, query, limit) {
      const pattern = `%${query.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
      const where = `tenant_id = ? AND deleted_at IS NULL AND external_user_id LIKE ? ESCAPE '\\'`;
      const { n } = db.prepare(`SELECT COUNT(*) AS n FROM users WHERE ${where}`).get(tenantId, pattern) as { n: number };
      const rows = db.prepare(`SELECT external_user_id, version, updated_at FROM users WHERE ${where} ORDER BY external_user_id LIMIT ?`).all(tenantId, pattern, limit) as {
        external_user_id: string;
        version: number;
        updated_at: string;
      }[];
      return {
        total: n,
        people: rows.map((u) => ({ externalUserId: u.external_user_id, version: u.version, groups: store.groups.of(tenantId, u.external_user_id), updatedAt: u.updated_at, heldBy: [deviceId], pin: store.pins.has(tenantId, u.external_user_id) })),
      };
    },
    // an erasure here is done when it is made, and leaves only a pseudonym; conflicts are the hub's
    erasures: async () => [],
    conflicts: async () => [],
    resolveConflict: async () => ({ error: "a device has no conflicts: they are the hub's" }),
    setPin: async () => ({ error: "a device's PINs are set with its API (POST /device/v1/set-pin), or at the hub for a fleet" }),
    async activity(tenantId, filter: ActivityFilter) {
      const conditions: [string, string | undefined][] = [
        ['door_id = ?', filter.door],
        ['external_user_id = ?', filter.person],
        ['created_at >= ?', filter.from],
        ['created_at < ?', filter.to],
      ];
      const given = conditions.filter(([, value]) => value !== undefined);
      const where = ['tenant_id = ?', ...given.map(([sql]) => sql)];
      const params: unknown[] = [tenantId, ...given.map(([, value]) => value)];
      const rows = db
        .prepare(`SELECT id, type, result, reason, external_user_id, door_id, created_at FROM audit_events WHERE ${where.join(' AND ')} ORDER BY created_at DESC, rowid DESC LIMIT ?`)
        .all(...params, filter.limit) as AuditRow[];
      return rows.map(toEvent);
    },
    async admin(name) {
      const row = db.prepare('SELECT name, password_hash FROM console_admins WHERE name = ?').get(name) as { name: string; password_hash: string } | undefined;
      return row ? { name: row.name, passwordHash: row.password_hash } : null;
    },
    async createSession(tokenHash, session) {
      db.prepare('DELETE FROM console_sessions WHERE expires_at < ?').run(new Date().toISOString());
      db.prepare('INSERT INTO console_sessions (token_hash, admin, csrf, expires_at) VALUES (?, ?, ?, ?)').run(tokenHash, session.admin, session.csrf, session.expiresAt);
    },
    async session(tokenHash) {
      const row = db.prepare('SELECT admin, csrf, expires_at FROM console_sessions WHERE token_hash = ? AND expires_at > ?').get(tokenHash, new Date().toISOString()) as
        | { admin: string; csrf: string; expires_at: string }
        | undefined;
      return row ? { admin: row.admin, csrf: row.csrf, expiresAt: row.expires_at } : null;
    },
    async deleteSession(tokenHash) {
      db.prepare('DELETE FROM console_sessions WHERE token_hash = ?').run(tokenHash);
    },
  };
}

/** Adds an admin of this device's console, or sets the password of one (`authface admin add`). */
export function setDeviceAdmin(store: Pick<Store, 'db'>, name: string, passwordHash: string): 'added' | 'updated' {
  const existed = store.db.prepare('SELECT 1 FROM console_admins WHERE name = ?').get(name) !== undefined;
  store.db.transaction(() => {
    store.db
      .prepare('INSERT INTO console_admins (name, password_hash, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash')
      .run(name, passwordHash, new Date().toISOString());
    // a new password ends the admin's open sessions
    store.db.prepare('DELETE FROM console_sessions WHERE admin = ?').run(name);
  })();
  return existed ? 'updated' : 'added';
}
