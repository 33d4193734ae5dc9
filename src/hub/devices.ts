import crypto from 'node:crypto';
import type pg from 'pg';
import type { DeviceState } from '../sync/protocol.ts';
import { ClaimError, HubError } from './errors.ts';
import type { TenantKeyVersion } from './keys.ts';
import type { HubStore } from './store.ts';

/**
 * A device found diverged is told to reload a snapshot at once; one that is still different after
 * its repair is told again at most this often (a device that keeps differing is not sent one
 * snapshot after another). Its states are signed by its own key, so nobody else can make it look
 * diverged, or in step.
 */
const REPAIR_INTERVAL = '30 seconds';

/**
 * The devices of each tenant at the hub: single-use claim codes, the public key each device joined
 * with, revocation (with the key rotation it takes), and the state each device reports.
 */
export class HubDevices {
  constructor(private readonly store: HubStore) {}

  /**
   * A claim for a new device of the tenant: a short single-use code valid for `ttlSeconds`
   * (`authface hub device add`). Only its SHA-256 is stored. A device id already joined, or
   * waiting for its claim in another tenant, is refused; an earlier unused code for the same id in
   * this tenant stops working.
   */
  async add(tenantId: string, deviceId: string, ttlSeconds: number): Promise<{ code: string; expiresAt: Date }> {
    return this.store.transaction(async (db) => {
      if (!(await this.store.lockTenant(db, tenantId))) throw new HubError(`no tenant ${tenantId} at the hub (authface hub tenant add)`);
      await lockDeviceName(db, deviceId);
      const taken = await nameTaken(db, tenantId, deviceId);
      if (taken) throw new HubError(taken);
      const pending = await db.query('SELECT 1 FROM hub_claims WHERE device_id = $1 AND tenant_id <> $2 AND used_at IS NULL AND expires_at > now()', [deviceId, tenantId]);
      if (pending.rowCount) throw new HubError(`device ${deviceId} is waiting to join another tenant: choose another name`);
      await db.query('UPDATE hub_claims SET expires_at = LEAST(expires_at, now()) WHERE tenant_id = $1 AND device_id = $2 AND used_at IS NULL', [tenantId, deviceId]);
      const code = newClaimCode();
      const r = await db.query<{ expires_at: Date }>(
        `INSERT INTO hub_claims (tenant_id, code_hash, device_id, expires_at) VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at`,
        [tenantId, claimHash(code), deviceId, ttlSeconds],
      );
      return { code, expiresAt: r.rows[0].expires_at };
    });
  }

  /**
   * Uses a claim code once: the device's public key is registered under the claim's device id.
   * Refused (ClaimError) when the code is unknown, used or expired, or when its device id has
   * joined since (in any tenant: codes of two tenants made before this release may name one
   * device); nothing changes then.
   */
  async claim(code: string, publicKey: string, signingKey?: string): Promise<{ tenantId: string; deviceId: string }> {
    return this.store.transaction(async (db) => {
      const r = await db.query<{ tenant_id: string; device_id: string; used_at: Date | null; expired: boolean }>(
        'SELECT tenant_id, device_id, used_at, expires_at <= now() AS expired FROM hub_claims WHERE code_hash = $1 FOR UPDATE',
        [claimHash(code)],
      );
      const claim = r.rows[0];
      if (!claim) throw new ClaimError('unknown_code', 'this code is not one the hub gave: check it, or ask for a new one (authface hub device add)');
      if (claim.used_at) throw new ClaimError('code_used', 'this code has already been used: a code joins one device once (authface hub device add gives a new one)');
      if (claim.expired) throw new ClaimError('code_expired', 'this code has expired: ask for a new one (authface hub device add)');
      await lockDeviceName(db, claim.device_id);
      const taken = await nameTaken(db, claim.tenant_id, claim.device_id);
      if (taken) throw new ClaimError('name_taken', `${taken}; ask for a code under another name (authface hub device add)`);
      await db.query('UPDATE hub_claims SET used_at = now() WHERE tenant_id = $1 AND code_hash = $2', [claim.tenant_id, claimHash(code)]);
      await recordKeys(db, claim.tenant_id, claim.device_id, publicKey, signingKey);
      return { tenantId: claim.tenant_id, deviceId: claim.device_id };
    });
  }

  /** Whether the device has joined the tenant (it holds the tenant's keys) and was not revoked since. */
  async hasJoined(tenantId: string, deviceId: string): Promise<boolean> {
    const r = await this.store.pool.query('SELECT 1 FROM hub_devices WHERE tenant_id = $1 AND device_id = $2 AND public_key IS NOT NULL AND revoked_at IS NULL', [tenantId, deviceId]);
    return (r.rowCount ?? 0) > 0;
  }

  /** Makes a used code usable again, and its device not joined (it could not be given what it needs). */
  async unclaim(code: string): Promise<void> {
    await this.store.transaction(async (db) => {
      const r = await db.query<{ tenant_id: string; device_id: string }>('UPDATE hub_claims SET used_at = NULL WHERE code_hash = $1 RETURNING tenant_id, device_id', [claimHash(code)]);
      const claim = r.rows[0];
      if (claim) await db.query('UPDATE hub_devices SET public_key = NULL, signing_key = NULL, joined_at = NULL WHERE tenant_id = $1 AND device_id = $2', [claim.tenant_id, claim.device_id]);
    });
  }

  /**
   * Revokes a joined device: it is marked revoked, and the tenant's key rotates in the same
   * transaction (the new version authenticates the log from the next change on, and seals every
   * template sequenced from then). Returns the key version and the devices that are to receive it.
   * Revoking a device already revoked changes nothing and returns the same (its notices can be sent again).
   */
  async revoke(tenantId: string, deviceId: string): Promise<{ revokedAt: Date; publicKey: string; key: TenantKeyVersion; rotated: boolean }> {
    return this.store.transaction(async (db) => {
      const counter = await db.query<{ next_seq: string }>('SELECT next_seq FROM hub_tenants WHERE tenant_id = $1 FOR UPDATE', [tenantId]);
      if (!counter.rows[0]) throw new HubError(`no tenant ${tenantId} at the hub (authface hub tenant add)`);
      const r = await db.query<{ public_key: string | null; revoked_at: Date | null }>('SELECT public_key, revoked_at FROM hub_devices WHERE tenant_id = $1 AND device_id = $2 FOR UPDATE', [tenantId, deviceId]);
      const device = r.rows[0];
      if (!device?.public_key) throw new HubError(`no device ${deviceId} has joined tenant ${tenantId} (authface hub device list)`);
      if (device.revoked_at) return { revokedAt: device.revoked_at, publicKey: device.public_key, key: (await this.store.keys.current(tenantId, db)) as TenantKeyVersion, rotated: false };
      const revoked = await db.query<{ revoked_at: Date }>('UPDATE hub_devices SET revoked_at = now() WHERE tenant_id = $1 AND device_id = $2 RETURNING revoked_at', [tenantId, deviceId]);
      // an unused code for this device stops working too
      await db.query('UPDATE hub_claims SET expires_at = LEAST(expires_at, now()) WHERE tenant_id = $1 AND device_id = $2 AND used_at IS NULL', [tenantId, deviceId]);
      const key = await this.store.keys.rotate(db, tenantId, Number(counter.rows[0].next_seq));
      return { revokedAt: revoked.rows[0].revoked_at, publicKey: device.public_key, key, rotated: true };
    });
  }

  /** The tenant's joined devices and their public keys (revoked ones with the time they were revoked). */
  async joined(tenantId: string): Promise<{ deviceId: string; publicKey: string; revokedAt: Date | null }[]> {
    const r = await this.store.pool.query<{ device_id: string; public_key: string; revoked_at: Date | null }>(
      'SELECT device_id, public_key, revoked_at FROM hub_devices WHERE tenant_id = $1 AND public_key IS NOT NULL ORDER BY device_id',
      [tenantId],
    );
    return r.rows.map((d) => ({ deviceId: d.device_id, publicKey: d.public_key, revokedAt: d.revoked_at }));
  }

  /**
   * The tenant's joined devices as senders of sync messages: each one's Ed25519 signing key (null
   * for a device that joined with an earlier release, which signs nothing) and whether it was revoked.
   */
  async senders(tenantId: string): Promise<Map<string, { signingKey: string | null; revoked: boolean; boot: number | null }>> {
    const r = await this.store.pool.query<{ device_id: string; signing_key: string | null; revoked: boolean; boot: number | null }>(
      'SELECT device_id, signing_key, revoked_at IS NOT NULL AS revoked, boot FROM hub_devices WHERE tenant_id = $1 AND public_key IS NOT NULL',
      [tenantId],
    );
    return new Map(r.rows.map((d) => [d.device_id, { signingKey: d.signing_key, revoked: d.revoked, boot: d.boot }]));
  }

  /** A joined device's keys and standing; undefined for a name that has not joined the tenant. */
  async keysOf(tenantId: string, deviceId: string): Promise<{ publicKey: string; signingKey: string | null; revoked: boolean } | undefined> {
    const r = await this.store.pool.query<{ public_key: string; signing_key: string | null; revoked: boolean }>(
      'SELECT public_key, signing_key, revoked_at IS NOT NULL AS revoked FROM hub_devices WHERE tenant_id = $1 AND device_id = $2 AND public_key IS NOT NULL',
      [tenantId, deviceId],
    );
    const d = r.rows[0];
    return d && { publicKey: d.public_key, signingKey: d.signing_key, revoked: d.revoked };
  }

  /** Records the signing key of a device that joined with an earlier release (hub/signing-registration.ts); false if it has one, or was revoked. */
  async registerSigningKey(tenantId: string, deviceId: string, signingKey: string): Promise<boolean> {
    const r = await this.store.pool.query(
      'UPDATE hub_devices SET signing_key = $3, boot = NULL WHERE tenant_id = $1 AND device_id = $2 AND public_key IS NOT NULL AND signing_key IS NULL AND revoked_at IS NULL',
      [tenantId, deviceId, signingKey],
    );
    return r.rowCount === 1;
  }

  /**
   * A device set up by hand (`authface hub wrap-key`) is registered as a join registers it: its
   * key pair, and its signing key. Refused for a name another tenant's device holds, or a revoked one.
   */
  async register(tenantId: string, deviceId: string, publicKey: string, signingKey?: string): Promise<void> {
    await this.store.transaction(async (db) => {
      if (!(await this.store.lockTenant(db, tenantId))) throw new HubError(`no tenant ${tenantId} at the hub (authface hub tenant add)`);
      await lockDeviceName(db, deviceId);
      // registering again a device of this tenant replaces its keys (a device set up anew by hand)
      const taken = await nameTaken(db, tenantId, deviceId, { sameTenant: true });
      if (taken) throw new HubError(taken);
      await recordKeys(db, tenantId, deviceId, publicKey, signingKey);
    });
  }

  /** The ids of the tenant's revoked devices. */
  async revoked(tenantId: string): Promise<Set<string>> {
    const r = await this.store.pool.query<{ device_id: string }>('SELECT device_id FROM hub_devices WHERE tenant_id = $1 AND revoked_at IS NOT NULL', [tenantId]);
    return new Set(r.rows.map((d) => d.device_id));
  }

  /**
   * Records what a device reported. A device at the head with nothing of its own on the way whose
   * user set differs from the hub's has diverged: it is flagged, and `repair` says to tell it to
   * reload a snapshot (at once, then at most once per REPAIR_INTERVAL).
   */
  async recordState(state: DeviceState): Promise<{ diverged: boolean; ahead: boolean; repair: boolean }> {
    let diverged = false;
    let ahead = false;
    const settled = state.applied_seq !== undefined && (state.pending ?? 0) === 0;
    const head = await this.store.headSeq(state.tenant_id);
    // a device that applied more than the log holds: the log was rewound (a database failover)
    if (state.state === 'online' && state.applied_seq !== undefined && state.applied_seq > head) diverged = ahead = (await this.store.headSeq(state.tenant_id)) < state.applied_seq;
    else if (state.state === 'online' && state.digest !== undefined && settled && state.applied_seq === head) {
      const digest = await this.store.digest(state.tenant_id);
      // the hub's digest at that same sequence: a change sequenced between the two reads moves the
      // head, and the state is then judged by the next one (a door is not repaired for being quick)
      diverged = digest !== state.digest && (await this.store.headSeq(state.tenant_id)) === head;
    }
    const r = await this.store.pool.query<{ repair: boolean }>(
      `INSERT INTO hub_devices (tenant_id, device_id, state, applied_seq, digest, users, model, version, boot, diverged, last_seen, repaired_at, doors)
       VALUES ($1, $2, $3, COALESCE($4, 0), $5, $6, $7, $8, $9, $10, now(), CASE WHEN $10 THEN now() END, $12::jsonb)
       ON CONFLICT (tenant_id, device_id) DO UPDATE SET state = excluded.state, last_seen = now(),
         applied_seq = COALESCE($4, hub_devices.applied_seq), digest = COALESCE($5, hub_devices.digest), users = COALESCE($6, hub_devices.users),
         model = COALESCE($7, hub_devices.model), version = COALESCE($8, hub_devices.version), boot = COALESCE($9, hub_devices.boot),
         doors = COALESCE($12::jsonb, hub_devices.doors),
         diverged = CASE WHEN $4::bigint IS NULL THEN hub_devices.diverged ELSE excluded.diverged END,
         repaired_at = CASE WHEN $10 AND (hub_devices.repaired_at IS NULL OR hub_devices.repaired_at < now() - $11::interval) THEN now() ELSE hub_devices.repaired_at END
       RETURNING $10::boolean AND repaired_at = now() AS repair`,
      [state.tenant_id, state.device_id, state.state, state.applied_seq ?? null, state.digest ?? null, state.users ?? null, state.model ?? null, state.version ?? null, state.boot ?? null, diverged, REPAIR_INTERVAL, state.doors ? JSON.stringify(state.doors) : null],
    );
    return { diverged, ahead, repair: r.rows[0]?.repair === true };
  }

  /** The tenant's devices as the hub last heard them; a revoked one is `revoked` and holds no one, whatever it said last. */
  async list(tenantId: string): Promise<{ deviceId: string; state: string; appliedSeq: number; lag: number; diverged: boolean; boot: number | null; users: number | null; revokedAt: Date | null }[]> {
    const head = await this.store.headSeq(tenantId);
    const r = await this.store.pool.query<{ device_id: string; state: string; applied_seq: string; diverged: boolean; boot: number | null; users: number | null; revoked_at: Date | null }>(
      'SELECT device_id, state, applied_seq, diverged, boot, users, revoked_at FROM hub_devices WHERE tenant_id = $1 ORDER BY device_id',
      [tenantId],
    );
    return r.rows.map((d) => ({
      deviceId: d.device_id,
      state: d.revoked_at ? 'revoked' : d.state,
      appliedSeq: Number(d.applied_seq),
      lag: head - Number(d.applied_seq),
      diverged: d.diverged,
      boot: d.boot,
      users: d.revoked_at ? 0 : d.users,
      revokedAt: d.revoked_at,
    }));
  }

  /** Whether a person's deletion has reached every device of the tenant ("applied on 7 of 8"). */
  async erasureStatus(tenantId: string, externalUserId: string): Promise<{ seq: number; applied: number; devices: number; complete: boolean } | null> {
    const del = await this.store.pool.query<{ seq: string }>(
      `SELECT seq FROM hub_changes WHERE tenant_id = $1 AND external_user_id = $2 AND kind = 'user.delete' ORDER BY seq DESC LIMIT 1`,
      [tenantId, externalUserId],
    );
    if (!del.rows[0]) return null;
    const seq = Number(del.rows[0].seq);
    const counts = await this.store.pool.query<{ devices: number; applied: number }>(
      'SELECT COUNT(*)::int AS devices, COUNT(*) FILTER (WHERE applied_seq >= $2)::int AS applied FROM hub_devices WHERE tenant_id = $1',
      [tenantId, seq],
    );
    const { devices, applied } = counts.rows[0];
    return { seq, applied, devices, complete: devices > 0 && applied === devices };
  }
}

// Crockford's base32 without the letters read as others (no I, L, O, U): 16 of them are 80 bits
const CLAIM_ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/**
 * A device id names the device's own topics (`<prefix>/<device>/…`), so it is unique across the
 * hub, not only in its tenant. Adding and claiming a name take this lock, so two hubs (or two
 * requests) cannot both hand it out.
 */
async function lockDeviceName(db: pg.PoolClient, deviceId: string): Promise<void> {
  await db.query("SELECT pg_advisory_xact_lock(hashtext('authface-device-name'), hashtext($1))", [deviceId]);
}

/**
 * Why the name cannot be given to a device of `tenantId`, or null when it is free. `sameTenant`:
 * a device of this tenant that holds it may have it again (registered anew by hand).
 */
async function nameTaken(db: pg.PoolClient, tenantId: string, deviceId: string, { sameTenant = false } = {}): Promise<string | null> {
  const joined = await db.query<{ tenant_id: string; revoked: boolean }>('SELECT tenant_id, revoked_at IS NOT NULL AS revoked FROM hub_devices WHERE device_id = $1 AND public_key IS NOT NULL', [deviceId]);
  const taken = joined.rows[0];
  if (taken?.revoked) return `device ${deviceId} was revoked: its name stays retired (a notice to it names it); choose another name`;
  if (taken && !(sameTenant && taken.tenant_id === tenantId)) return `device ${deviceId} has already joined${taken.tenant_id === tenantId ? '' : ' another tenant'}: choose another name`;
  return null;
}

/** A device's key pair and signing key, as a join or `authface hub wrap-key` registers them. */
async function recordKeys(db: pg.PoolClient, tenantId: string, deviceId: string, publicKey: string, signingKey: string | undefined): Promise<void> {
  await db.query(
    `INSERT INTO hub_devices (tenant_id, device_id, state, public_key, signing_key, joined_at) VALUES ($1, $2, 'offline', $3, $4, now())
     ON CONFLICT (tenant_id, device_id) DO UPDATE SET public_key = excluded.public_key, signing_key = excluded.signing_key, joined_at = now(),
       -- new keys: another device under the name, whose boots count afresh (hub/replay-guard.ts)
       boot = CASE WHEN hub_devices.signing_key IS NOT DISTINCT FROM excluded.signing_key THEN hub_devices.boot END`,
    [tenantId, deviceId, publicKey, signingKey ?? null],
  );
}

function newClaimCode(): string {
  const bytes = crypto.randomBytes(16);
  const chars = [...bytes].map((b) => CLAIM_ALPHABET[b % 32]).join('');
  return chars.match(/.{4}/g)!.join('-');
}

/** The stored form of a code: typed in any case, with or without its dashes. */
function claimHash(code: string): Buffer {
  return crypto.createHash('sha256').update(code.toUpperCase().replace(/[^0-9A-Z]/g, '')).digest();
}
