import os from 'node:os';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Settings } from '../config/settings.ts';
import { createLogger } from '../core/logger.ts';
import { HubStore } from '../hub/store.ts';
import { postgresBiometryStore } from '../hub/biometry-store.ts';
import { startHub } from '../hub/service.ts';
import { FLEET_MODEL } from '../sync/fleet-model.ts';
import { VERSION } from '../service.ts';
import type { LivenessMode } from '../store/tenants.ts';
import { parseMasterKey } from '../store/crypto.ts';
import { loadDeviceKey, loadSigningKey } from '../sync/device-key.ts';
import { HubError } from '../hub/errors.ts';
import mqtt from 'mqtt';
import { BrokerAdmin } from '../hub/broker-admin.ts';
import { type Revocation, revokeDevice } from '../hub/revocation.ts';
import { syncClientOptions } from '../sync/client-options.ts';
import { setHubAdmin } from '../console/hub-source.ts';
import { adminProblem } from '../console/admins.ts';
import { hashPassword } from '../mqtt/users-file.ts';
import { wrapTenantKey } from '../sync/envelope.ts';
import { MAX_ALLOWED_ORIGINS, groupNameSchema } from '../sync/protocol.ts';
import { type ConflictResolution, resolveConflict } from '../hub/conflicts.ts';
import { CommandError } from './errors.ts';
import { setPinAtHub } from '../hub/pins.ts';
import { type Replication, parseHubDatabaseUrl, replicationOf } from '../hub/database.ts';
import type { Check } from '../device/doctor.ts';
import { assertUsablePin } from '../users/service.ts';
import { ServiceError } from '../errors.ts';
import { stopOnSignals } from './stop-signals.ts';

const STOP_GRACE_MS = 5000;

/**
 * The hub's database, from --database-url or AUTHFACE_HUB_DATABASE_URL, with the master key when
 * the command changes something (every change is authenticated under a tenant key it opens).
 */
async function openHub(settings: Settings, databaseUrl?: string, masterKey?: Buffer): Promise<HubStore> {
  const url = databaseUrl ?? settings.AUTHFACE_HUB_DATABASE_URL;
  if (!url) throw new CommandError('the hub needs its PostgreSQL database: --database-url postgres://… or AUTHFACE_HUB_DATABASE_URL');
  const logger = createLogger(settings.LOG_LEVEL);
  try {
    return await HubStore.open(url, { masterKey, onIdleError: (err) => logger.warn({ problem: err.message }, 'hub: a database connection was dropped; it is replaced on the next query') });
  } catch (err) {
    throw new CommandError(`cannot open the hub database ${url.replace(/\/\/[^@/]*@/, '//')}: ${(err as Error).message}`);
  }
}

/** Runs a command on the hub database, closed after it (a HubError is the operator's to fix, and printed as such). */
async function withHub<T>(settings: Settings, databaseUrl: string | undefined, run: (store: HubStore) => Promise<T>, masterKey?: Buffer): Promise<T> {
  const store = await openHub(settings, databaseUrl, masterKey);
  try {
    return await run(store);
  } finally {
    await store.close();
  }
}

function hubMasterKey(settings: Settings): Buffer {
  if (!settings.AUTHFACE_HUB_MASTER_KEY) throw new CommandError('set AUTHFACE_HUB_MASTER_KEY (openssl rand -hex 32): it seals the tenant keys in the hub database');
  return parseMasterKey(settings.AUTHFACE_HUB_MASTER_KEY, 'AUTHFACE_HUB_MASTER_KEY');
}

/** The hub starts on a broker without per-device rights only when told so. */
const BROKER_ACL_UNSET =
  'AUTHFACE_HUB_BROKER_ACL is not set: set mosquitto-dynsec for a broker whose rights the hub manages (firmware-config/mosquitto/dynsec.conf, the README\'s fleet quick start), or none for a broker without per-device rights, where any client reads every tenant\'s log and can delay or drop messages (it can forge none: README, "Security")';

/**
 * `authface hub serve`: sequences and publishes the fleet's changes, and serves /biometry/v1 and
 * the capture page on the central store (HOST, PORT, PUBLIC_URL as a device), until stopped.
 */
export async function hubServe(settings: Settings, opts: { databaseUrl?: string; brokerUrl?: string; prefix: string }): Promise<void> {
  const brokerUrl = opts.brokerUrl ?? settings.AUTHFACE_HUB_BROKER_URL;
  if (!brokerUrl) throw new CommandError('the hub needs the broker its devices use: --broker-url mqtt://… or AUTHFACE_HUB_BROKER_URL');
  const databaseUrl = opts.databaseUrl ?? settings.AUTHFACE_HUB_DATABASE_URL;
  if (!databaseUrl) throw new CommandError('the hub needs its PostgreSQL database: --database-url postgres://… or AUTHFACE_HUB_DATABASE_URL');
  const logger = createLogger(settings.LOG_LEVEL);
  const brokerCa = readBrokerCa(settings);
  const brokerAcl = settings.AUTHFACE_HUB_BROKER_ACL;
  if (!brokerAcl) throw new CommandError(BROKER_ACL_UNSET);
  const hub = await startHub(settings, { databaseUrl, brokerUrl, deviceBrokerUrl: settings.AUTHFACE_HUB_DEVICE_BROKER_URL, brokerAcl, brokerCa, prefix: opts.prefix, masterKey: hubMasterKey(settings), logger, version: VERSION });
  const stop = async () => {
    // what is committed is in PostgreSQL and what is not is asked again by the devices: a stop
    // does not wait long for a backlog of answers (a reconnect storm) to drain
    setTimeout(() => process.exit(0), STOP_GRACE_MS).unref();
    await hub.close();
    process.exit(0);
  };
  stopOnSignals(stop);
}

/**
 * `authface hub tenant add`: a tenant of the fleet, with its key, and an API key for the hub's
 * /biometry/v1 (shown once; only its hash is stored).
 */
export async function hubTenantAdd(
  settings: Settings,
  opts: { name: string; id?: string; databaseUrl?: string; allowedOrigins?: string[]; liveness?: LivenessMode; padThreshold?: number },
): Promise<{ tenant_id: string; key_version: number; api_key: string; allowed_origins: string[] }> {
  const masterKey = hubMasterKey(settings);
  const allowedOrigins = opts.allowedOrigins ?? [];
  if (allowedOrigins.length > MAX_ALLOWED_ORIGINS) throw new CommandError(`a tenant allows at most ${MAX_ALLOWED_ORIGINS} origins`);
  return withHub(settings, opts.databaseUrl, async (store) => {
    const api = postgresBiometryStore(store, { model: FLEET_MODEL });
    const tenant = await api.tenants.create({
      id: opts.id ?? crypto.randomUUID(),
      name: opts.name,
      allowedOrigins,
      livenessMode: opts.liveness ?? 'active',
      ...(opts.padThreshold === undefined ? {} : { padThreshold: opts.padThreshold }),
    });
    const { keyVersion } = await store.keys.current(tenant.id);
    const { apiKey } = await api.tenants.createKey(tenant.id);
    return { tenant_id: tenant.id, key_version: keyVersion, api_key: apiKey, allowed_origins: allowedOrigins };
  }, masterKey);
}

/** `authface hub tenant update`: a tenant's name, allowed origins or liveness, sequenced so every door takes them. */
export async function hubTenantUpdate(
  settings: Settings,
  opts: { tenant: string; name?: string; allowedOrigins?: string[]; liveness?: LivenessMode; padThreshold?: number | null; databaseUrl?: string },
): Promise<{ tenant_id: string; seq: number; name: string; allowed_origins: string[]; liveness_mode: LivenessMode; pad_threshold: number | null }> {
  if (opts.allowedOrigins && opts.allowedOrigins.length > MAX_ALLOWED_ORIGINS) throw new CommandError(`a tenant allows at most ${MAX_ALLOWED_ORIGINS} origins`);
  const masterKey = hubMasterKey(settings);
  return withHub(settings, opts.databaseUrl, async (store) => {
    const change = await store.updateTenantSettings(opts.tenant, {
      ...(opts.name ? { name: opts.name } : {}),
      ...(opts.allowedOrigins ? { allowed_origins: opts.allowedOrigins } : {}),
      ...(opts.liveness ? { liveness_mode: opts.liveness } : {}),
      ...(opts.padThreshold === undefined ? {} : { pad_threshold: opts.padThreshold }),
    });
    if (change.kind !== 'tenant.settings') throw new Error('unexpected change');
    return { tenant_id: opts.tenant, seq: change.seq, name: change.name, allowed_origins: change.allowed_origins, liveness_mode: change.liveness_mode, pad_threshold: change.pad_threshold ?? null };
  }, masterKey);
}

/**
 * `authface hub group add|remove`: puts an enrolled person in a group or takes them out. Doors whose
 * policy allows that group learn it from the log (the serving hub's next head, within 5 s).
 */
export async function hubGroupChange(
  settings: Settings,
  opts: { tenant: string; group: string; user: string; member: boolean; databaseUrl?: string },
): Promise<{ external_user_id: string; groups: string[]; seq: number | null }> {
  const group = groupNameSchema.safeParse(opts.group);
  if (!group.success) throw new CommandError(`--group ${opts.group}: ${group.error.issues[0].message}`);
  const masterKey = hubMasterKey(settings);
  return withHub(settings, opts.databaseUrl, async (store) => {
    const change = await store.changeGroup(opts.tenant, opts.user, group.data, opts.member);
    if (change && change.kind !== 'user.groups') throw new Error('unexpected change');
    const groups = change ? change.groups : ((await store.groupMembers(opts.tenant)).find((m) => m.externalUserId === opts.user)?.groups ?? []);
    return { external_user_id: opts.user, groups, seq: change?.seq ?? null };
  }, masterKey);
}

/**
 * `authface hub pin set|remove`: a person's PIN for face+pin doors, a change of the log (every door
 * has it from the serving hub's next head, within 5 s). Only the PIN's scrypt verifier, sealed
 * under the tenant key, is kept and sent; the change is audited.
 */
export async function hubPinChange(
  settings: Settings,
  opts: { tenant: string; user: string; pin: string | null; databaseUrl?: string },
): Promise<{ external_user_id: string; pin: 'set' | 'removed'; seq: number }> {
  if (opts.pin !== null) {
    try {
      assertUsablePin(opts.pin);
    } catch (err) {
      throw err instanceof ServiceError ? new CommandError(err.message) : err;
    }
  }
  const masterKey = hubMasterKey(settings);
  return withHub(settings, opts.databaseUrl, async (store) => {
    await knownTenant(store, opts.tenant);
    const result = await setPinAtHub(store, opts.tenant, opts.user, opts.pin, `cli ${os.userInfo().username}`);
    if ('refused' in result) throw new CommandError(result.refused === 'user_not_found' ? `${opts.user} is not enrolled in tenant ${opts.tenant}` : `${opts.user} has no PIN`);
    return { external_user_id: opts.user, pin: opts.pin === null ? 'removed' : 'set', seq: result.change.seq };
  }, masterKey);
}

/** `authface hub group list`: the tenant's people who are in a group, with their groups. */
export async function hubGroupList(settings: Settings, opts: { tenant: string; databaseUrl?: string }): Promise<{ external_user_id: string; groups: string[] }[]> {
  return withHub(settings, opts.databaseUrl, async (store) => {
    await knownTenant(store, opts.tenant);
    return (await store.groupMembers(opts.tenant)).map((m) => ({ external_user_id: m.externalUserId, groups: m.groups }));
  });
}

/** `authface hub admin add`: an admin of the console (or a new password for one). */
export async function hubAdminAdd(settings: Settings, opts: { name: string; password: string; databaseUrl?: string }): Promise<{ admin: string; status: 'added' | 'updated' }> {
  const problem = adminProblem(opts.name, opts.password);
  if (problem) throw new CommandError(problem);
  return withHub(settings, opts.databaseUrl, async (store) => ({ admin: opts.name, status: await setHubAdmin(store, opts.name, hashPassword(opts.password)) }));
}

/**
 * `authface hub device add`: a short single-use code that lets one device join the tenant
 * (`authface join` on the device); it expires after `ttlMinutes`.
 */
export async function hubDeviceAdd(
  settings: Settings,
  opts: { tenant: string; name: string; ttlMinutes: number; databaseUrl?: string },
): Promise<{ device_id: string; code: string; expires_at: string; on_the_device: string }> {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(opts.name)) throw new CommandError(`--name ${opts.name}: use 1-64 letters, digits, - or _ (it is the device_id, an MQTT topic level)`);
  if (opts.name === 'sync') throw new CommandError('--name sync: the fleet log uses that topic level; choose another name');
  return withHub(settings, opts.databaseUrl, async (store) => {
    const { code, expiresAt } = await store.devices.add(opts.tenant, opts.name, opts.ttlMinutes * 60);
    // the address the hub serves on, as it recorded it when it started (PUBLIC_URL here overrides)
    const hubUrl = settings.PUBLIC_URL?.replace(/\/+$/, '') ?? (await store.setting('public_url')) ?? settings.publicUrl;
    return { device_id: opts.name, code, expires_at: expiresAt.toISOString(), on_the_device: `authface join --hub ${hubUrl} --code ${code}` };
  });
}

/**
 * `authface hub device revoke`: marks the device revoked and rotates the tenant key (one
 * transaction), then, over the broker with the hub's credentials, sends the device its signed
 * revocation and every other joined device the new key version, and removes its broker client
 * when the hub manages the broker's rights. Run again after a failure, it sends the notices again.
 */
export async function hubDeviceRevoke(
  settings: Settings,
  opts: { tenant: string; name: string; databaseUrl?: string; brokerUrl?: string; prefix: string },
): Promise<Revocation & { took_ms: number }> {
  const masterKey = hubMasterKey(settings);
  const brokerUrl = opts.brokerUrl ?? settings.AUTHFACE_HUB_BROKER_URL;
  if (!brokerUrl) throw new CommandError('revoking tells the devices over the broker: --broker-url mqtt://hub:…@… or AUTHFACE_HUB_BROKER_URL (the hub\'s own)');
  const started = performance.now();
  const ca = readBrokerCa(settings);
  return withHub(settings, opts.databaseUrl, async (store) => {
    await knownTenant(store, opts.tenant);
    let client: mqtt.MqttClient;
    try {
      client = await mqtt.connectAsync(brokerUrl, { ...syncClientOptions('authface-hub-revoke', ca ? { ca } : {}), reconnectPeriod: 0 });
    } catch (err) {
      throw new CommandError(`cannot reach the broker to tell the devices (${(err as Error).message}); nothing was revoked: try again once it is up`);
    }
    let admin: BrokerAdmin | undefined;
    try {
      if (settings.AUTHFACE_HUB_BROKER_ACL === 'mosquitto-dynsec') admin = await BrokerAdmin.connect(brokerUrl, opts.prefix, ca ? { ca } : {});
      const revocation = await revokeDevice(store, {
        tenantId: opts.tenant,
        deviceId: opts.name,
        prefix: opts.prefix,
        publish: async (topic, payload) => void (await client.publishAsync(topic, payload, { qos: 1, retain: true })),
        brokerAdmin: admin,
      });
      return { ...revocation, took_ms: Math.round(performance.now() - started) };
    } finally {
      await admin?.close();
      await client.endAsync();
    }
  }, masterKey);
}

/** The CA of the broker's certificate (AUTHFACE_HUB_BROKER_CA_FILE), when set. */
function readBrokerCa(settings: Settings): Buffer | undefined {
  const caFile = settings.AUTHFACE_HUB_BROKER_CA_FILE;
  try {
    return caFile ? fs.readFileSync(caFile) : undefined;
  } catch (err) {
    throw new CommandError(`AUTHFACE_HUB_BROKER_CA_FILE: cannot read ${caFile} (${(err as NodeJS.ErrnoException).code})`);
  }
}

/**
 * `authface hub wrap-key`: a device set up by hand. It is registered as a join registers one (its
 * key pair, and its signing key: the hub takes sync messages in its name only with its signature),
 * and every version of the tenant key is printed wrapped to its public key, for its
 * sync.tenant_key_file. A device of an earlier release has no signing key: it is heard on the
 * tenant key alone.
 */
export async function hubWrapKey(settings: Settings, opts: { tenant: string; device: string; publicKey: string; signingKey?: string; databaseUrl?: string }): Promise<unknown> {
  const masterKey = hubMasterKey(settings);
  if (!/^[A-Za-z0-9+/]{43}=$/.test(opts.publicKey)) throw new CommandError('--public-key: an X25519 public key in base64 (44 characters), as `authface sync key` prints it (device_public_key)');
  if (opts.signingKey !== undefined && !/^[A-Za-z0-9+/]{43}=$/.test(opts.signingKey)) throw new CommandError('--signing-key: an Ed25519 public key in base64 (44 characters), as `authface sync key` prints it (device_signing_key)');
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(opts.device)) throw new CommandError('--device: 1-64 letters, digits, - or _ (the device_id of its device file)');
  return withHub(settings, opts.databaseUrl, async (store) => {
    await knownTenant(store, opts.tenant);
    try {
      await store.devices.register(opts.tenant, opts.device, opts.publicKey, opts.signingKey);
    } catch (err) {
      if (err instanceof HubError) throw new CommandError(err.message);
      throw err;
    }
    const versions = await store.keys.all(opts.tenant);
    return { keys: versions.map((k) => ({ ...wrapTenantKey(k.key, opts.publicKey, { tenantId: opts.tenant, deviceId: opts.device, keyVersion: k.keyVersion }), sinceSeq: k.sinceSeq })) };
  }, masterKey);
}

/**
 * `authface hub status`: a tenant's log (head, where retention cut it), its devices (online or
 * not, how far behind, diverged) and the conflicts waiting for an admin.
 */
export async function hubStatus(settings: Settings, opts: { tenant: string; databaseUrl?: string }): Promise<unknown> {
  return withHub(settings, opts.databaseUrl, async (store) => {
    await knownTenant(store, opts.tenant);
    const devices = await store.devices.list(opts.tenant);
    return {
      tenant_id: opts.tenant,
      head: await store.headSeq(opts.tenant),
      log_starts_after: await store.compactedSeq(opts.tenant),
      devices: devices.map((d) => ({ device_id: d.deviceId, state: d.state, applied_seq: d.appliedSeq, lag: d.lag, diverged: d.diverged, boot: d.boot, people: d.users, ...(d.revokedAt ? { revoked_at: d.revokedAt.toISOString() } : {}) })),
      conflicts: (await store.conflicts(opts.tenant)).map((c) => ({ change_id: c.changeId, origin: c.origin, external_user_id: c.externalUserId, reason: c.reason })),
    };
  });
}

/**
 * `authface hub doctor`: the hub's database, and whether what the hub acknowledges survives the
 * loss of its server (README, "When the database or the broker fails").
 */
export async function hubDoctor(settings: Settings, opts: { databaseUrl?: string }): Promise<Check[]> {
  const url = opts.databaseUrl ?? settings.AUTHFACE_HUB_DATABASE_URL;
  if (!url) return [{ name: 'database', status: 'fail', detail: 'no database URL', fix: 'set AUTHFACE_HUB_DATABASE_URL or pass --database-url' }];
  const hosts = parseHubDatabaseUrl(url).hosts.map((h) => h.label);
  let replication: Replication;
  let epoch: string | null;
  try {
    [replication, epoch] = await withHub(settings, opts.databaseUrl, async (store) => [await replicationOf(store.pool), store.epoch] as const);
  } catch (err) {
    return [{ name: 'database', status: 'fail', detail: (err as Error).message, fix: `start PostgreSQL on ${hosts.join(' or ')}, or correct the URL` }];
  }
  const checks: Check[] = [{ name: 'database', status: 'ok', detail: `writing to ${replication.server} (hosts: ${hosts.join(', ')})` }];
  const standbys = replication.standbys.map((s) => `${s.name} ${s.state} ${s.syncState}`).join(', ') || 'none';
  if (replication.mode === 'synchronous') {
    checks.push({ name: 'replicas', status: 'ok', detail: `synchronous (synchronous_commit=${replication.synchronousCommit}, standbys: ${standbys}): an acknowledged change survives a failover` });
  } else {
    checks.push({
      name: 'replicas',
      status: 'warn',
      detail:
        replication.mode === 'asynchronous'
          ? `asynchronous (standbys: ${standbys}): a failover may lose the last acknowledged changes`
          : 'no standby: the database server is the fleet\'s single point of failure',
      fix: "stream to a standby and set synchronous_standby_names (and synchronous_commit = on) on the primary; give the hub both hosts: postgresql://…@primary,standby/db?target_session_attrs=read-write (README, \"When the database or the broker fails\")",
    });
  }
  checks.push(
    epoch === null
      ? { name: 'log epoch', status: 'warn', detail: 'the database does not give its system identifier and timeline: a door notices a log rewound by a failover only by a head below its place', fix: "let the hub's role call pg_control_system() and pg_walfile_name() (PostgreSQL allows every role by default)" }
      : { name: 'log epoch', status: 'ok', detail: `${epoch} (system identifier.timeline: a promotion starts a new one, and the doors check their place in the log)` },
  );
  if (hosts.length < 2) checks.push({ name: 'failover', status: 'warn', detail: 'the database URL names one host: after a failover the hub cannot find the new primary', fix: 'name every host in AUTHFACE_HUB_DATABASE_URL (host1,host2)' });
  return checks;
}

/**
 * `authface hub conflict resolve`: what the console's People page does (hub/conflicts.ts); the
 * serving hub's next head tells the doors.
 */
export async function hubConflictResolve(settings: Settings, opts: { tenant: string; changeId: string; resolution: ConflictResolution; databaseUrl?: string }): Promise<{ change_id: string; resolution: ConflictResolution; seq: number; kind: string }> {
  const masterKey = hubMasterKey(settings);
  return withHub(settings, opts.databaseUrl, async (store) => {
    await knownTenant(store, opts.tenant);
    const change = await resolveConflict(store, opts.tenant, opts.changeId, opts.resolution, `cli:${os.userInfo().username}`);
    return { change_id: opts.changeId, resolution: opts.resolution, seq: change.seq, kind: change.kind };
  }, masterKey);
}

async function knownTenant(store: HubStore, tenantId: string): Promise<void> {
  if (!(await store.hasTenant(tenantId))) throw new CommandError(`no tenant ${tenantId} at the hub (authface hub tenant add)`);
}

/** `authface sync key`: this device's public keys (the key pairs are made on first use). */
export function syncKey(settings: Settings): { device_public_key: string; device_signing_key: string } {
  return { device_public_key: loadDeviceKey(settings.dataDir).publicKey, device_signing_key: loadSigningKey(settings.dataDir).publicKey };
}

/** `authface hub key`: the hub's key of a tenant, which signs everything the hub sends its devices (a device set up by hand sets it as remote_commands.public_key). */
export async function hubKey(settings: Settings, opts: { tenant: string; databaseUrl?: string }): Promise<{ tenant_id: string; hub_public_key: string }> {
  const masterKey = hubMasterKey(settings);
  return withHub(settings, opts.databaseUrl, async (store) => {
    await knownTenant(store, opts.tenant);
    return { tenant_id: opts.tenant, hub_public_key: (await store.keys.commandKey(opts.tenant)).publicKey };
  }, masterKey);
}
