import crypto from 'node:crypto';
import { hashSecret } from '../core/secrets.ts';
import { type Db, now } from './database.ts';

export type LivenessMode = 'passive' | 'active';

export interface Tenant {
  id: string;
  name: string;
  livenessMode: LivenessMode;
  /** The anti-spoofing network's floor for this tenant's sessions (absent: the device's or service's; a door's own comes first). */
  padThreshold?: number;
  allowedOrigins: string[];
  createdAt: string;
}

interface TenantRow {
  id: string;
  name: string;
  liveness_mode: LivenessMode;
  pad_threshold: number | null;
  allowed_origins: string;
  created_at: string;
}

const API_KEY_PREFIX = 'afk_';

export class TenantStore {
  constructor(private readonly db: Db) {}

  /** `id`: a fleet device takes its tenant's id from the hub; otherwise a new one is drawn. */
  create(input: { name: string; allowedOrigins: string[]; livenessMode: LivenessMode; padThreshold?: number; id?: string }): Tenant {
    const { id = crypto.randomUUID(), ...rest } = input;
    const tenant: Tenant = { id, createdAt: now(), ...rest };
    this.db
      .prepare('INSERT INTO tenants (id, name, liveness_mode, pad_threshold, allowed_origins, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(tenant.id, tenant.name, tenant.livenessMode, tenant.padThreshold ?? null, JSON.stringify(tenant.allowedOrigins), tenant.createdAt);
    return tenant;
  }

  get(id: string): Tenant | undefined {
    const row = this.db.prepare('SELECT * FROM tenants WHERE id = ?').get(id) as TenantRow | undefined;
    return row && toTenant(row);
  }

  byName(name: string): Tenant | undefined {
    const row = this.db.prepare('SELECT * FROM tenants WHERE name = ? ORDER BY created_at LIMIT 1').get(name) as TenantRow | undefined;
    return row && toTenant(row);
  }

  list(): Tenant[] {
    return (this.db.prepare('SELECT * FROM tenants ORDER BY created_at, name').all() as TenantRow[]).map(toTenant);
  }

  /** Changes a tenant's name, allowed origins, liveness mode or anti-spoofing floor (null: none of its own); returns it as it is now. */
  update(id: string, changes: Partial<Pick<Tenant, 'name' | 'allowedOrigins' | 'livenessMode'>> & { padThreshold?: number | null }): Tenant | undefined {
    const current = this.get(id);
    if (!current) return undefined;
    const { padThreshold, ...rest } = changes;
    const next = { ...current, ...rest };
    const pad = padThreshold === undefined ? (current.padThreshold ?? null) : padThreshold;
    this.db
      .prepare('UPDATE tenants SET name = ?, liveness_mode = ?, pad_threshold = ?, allowed_origins = ? WHERE id = ?')
      .run(next.name, next.livenessMode, pad, JSON.stringify(next.allowedOrigins), id);
    return this.get(id);
  }

  /** A tenant's keys: ids and dates only (the keys themselves are not stored). */
  keys(tenantId: string): { keyId: string; createdAt: string; revokedAt: string | null }[] {
    return (
      this.db.prepare('SELECT id, created_at, revoked_at FROM api_keys WHERE tenant_id = ? ORDER BY created_at').all(tenantId) as {
        id: string;
        created_at: string;
        revoked_at: string | null;
      }[]
    ).map((k) => ({ keyId: k.id, createdAt: k.created_at, revokedAt: k.revoked_at }));
  }

  /** Whether the tenant is a fleet tenant this device replicates (its settings come from the hub's log). */
  followsHub(id: string): boolean {
    return this.db.prepare('SELECT 1 FROM sync_cursors WHERE tenant_id = ?').get(id) !== undefined;
  }

  count(): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM tenants').get() as { n: number }).n;
  }

  /** Creates a key for the tenant; the returned `apiKey` is the only time the key is visible. */
  createKey(tenantId: string): { keyId: string; apiKey: string } {
    if (!this.get(tenantId)) throw new Error(`unknown tenant ${tenantId}`);
    const keyId = `key_${crypto.randomUUID()}`;
    const apiKey = API_KEY_PREFIX + crypto.randomBytes(32).toString('base64url');
    this.db
      .prepare('INSERT INTO api_keys (id, tenant_id, key_hash, created_at) VALUES (?, ?, ?, ?)')
      .run(keyId, tenantId, hashSecret(apiKey), now());
    return { keyId, apiKey };
  }

  /** Revokes a key; returns false when no active key has this id. */
  revokeKey(keyId: string): boolean {
    const res = this.db
      .prepare('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL')
      .run(now(), keyId);
    return res.changes === 1;
  }

  findByApiKey(apiKey: string): Tenant | undefined {
    if (!apiKey.startsWith(API_KEY_PREFIX)) return undefined;
    const row = this.db
      .prepare(
        `SELECT t.* FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.key_hash = ? AND k.revoked_at IS NULL`,
      )
      .get(hashSecret(apiKey)) as TenantRow | undefined;
    return row && toTenant(row);
  }
}

function toTenant(row: TenantRow): Tenant {
  return {
    id: row.id,
    name: row.name,
    livenessMode: row.liveness_mode,
    ...(row.pad_threshold !== null ? { padThreshold: row.pad_threshold } : {}),
    allowedOrigins: JSON.parse(row.allowed_origins) as string[],
    createdAt: row.created_at,
  };
}
