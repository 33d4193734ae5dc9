import { registerSigningKey, signingKeyChallenge } from './signing-registration.ts';
import type http from 'node:http';
import { createApp } from '../api/app.ts';
import { composeBiometry, listen } from '../biometry.ts';
import { FLEET_MODEL } from '../sync/fleet-model.ts';
import { MATCHERS, matcher } from '../biometrics/matchers/index.ts';
import type { FaceAnalyzer } from '../biometrics/index.ts';
import type { Settings } from '../config/settings.ts';
import type { Logger } from '../core/logger.ts';
import type { BiometryStore } from '../store/biometry-store.ts';
import { postgresBiometryStore } from './biometry-store.ts';
import { fleetRoutes } from '../api/routes/fleet.ts';
import { HubGallery } from './gallery.ts';
import { BrokerAdmin } from './broker-admin.ts';
import { hubCommands } from './commands.ts';
import { requestedNotice } from './revocation.ts';
import { consoleRoutes } from '../console/routes.ts';
import { hubConsoleSource } from '../console/hub-source.ts';
import { t } from '../console/pages.ts';
import { deviceJoin } from './join.ts';
import { HubError } from './errors.ts';
import { hubPinKeeper } from './pins.ts';
import { HubStore } from './store.ts';
import { type FleetCheck, HubSync } from './sync-service.ts';
import type { GalleryIndex } from '../biometrics/gallery.ts';
import { EnvelopeError, openTemplate, sealTemplate } from '../sync/envelope.ts';

const COMPACT_INTERVAL_MS = 3_600_000;

export interface HubOptions {
  databaseUrl: string;
  brokerUrl: string;
  /** The broker URL devices are given when they join (default: brokerUrl). */
  deviceBrokerUrl?: string;
  /** The hub administers the broker's dynamic security plugin: a broker client per device. */
  brokerAcl?: 'none' | 'mosquitto-dynsec';
  /** CA of the broker's TLS certificate (AUTHFACE_HUB_BROKER_CA_FILE, read). */
  brokerCa?: Buffer;
  prefix: string;
  masterKey: Buffer;
  logger: Logger;
  version: string;
  /** A shared analyzer (tests). */
  analyzer?: FaceAnalyzer;
}

export interface Hub {
  store: HubStore;
  biometry: BiometryStore;
  sync: HubSync;
  server: http.Server;
  url: string;
  close(): Promise<void>;
}

/**
 * The hub: the fleet's log on the broker (HubSync) and the same /biometry/v1 API and capture page
 * as a device, on the central PostgreSQL store. A person enrolled here is a change of the tenant's
 * log like one enrolled at a door, published as soon as it commits.
 */
export async function startHub(settings: Settings, options: HubOptions): Promise<Hub> {
  const { logger } = options;
  const stack: (() => void | Promise<void>)[] = [];
  const unwind = async () => {
    for (const undo of stack.splice(0).reverse()) await undo();
  };
  try {
    const store = await HubStore.open(options.databaseUrl, {
      masterKey: options.masterKey,
      onIdleError: (err) => logger.warn({ problem: err.message }, 'hub: a database connection was dropped; it is replaced on the next query'),
    });
    stack.push(() => store.close());
    // the broker's rights first: giving the hub's user its role makes the broker drop its connections
    let brokerAdmin: BrokerAdmin | undefined;
    if (options.brokerAcl === 'mosquitto-dynsec') {
      const admin = await BrokerAdmin.connect(options.brokerUrl, options.prefix, options.brokerCa ? { ca: options.brokerCa } : {});
      stack.push(() => admin.close());
      const hubUser = decodeURIComponent(new URL(options.brokerUrl).username);
      if (!hubUser) throw new HubError("AUTHFACE_HUB_BROKER_ACL=mosquitto-dynsec needs the hub's broker user in the broker URL (mqtt://hub:password@broker)");
      await admin.allowHub(hubUser);
      // devices that joined before this release get its rights (the signed log and head)
      for (const { tenantId } of await store.heads()) {
        for (const d of await store.devices.joined(tenantId)) if (!d.revokedAt) await admin.updateDevice(tenantId, d.deviceId);
      }
      brokerAdmin = admin;
    }
    // on a broker without per-device rights the signatures keep the fleet's data honest, not private
    const warnings = brokerAdmin ? [] : [t('warning.open_broker')];
    for (const warning of warnings) logger.warn(`hub: ${warning}`);
    const sync = await HubSync.start(store, { url: options.brokerUrl, prefix: options.prefix, logger, ca: options.brokerCa });
    stack.push(() => sync.close());
    const biometry = postgresBiometryStore(store, {
      model: FLEET_MODEL,
      furtherModels: MATCHERS.map((m) => m.id).filter((m) => m !== FLEET_MODEL),
      onSequenced: (change) => sync.publish(change),
    });
    const gallery = new HubGallery(store, (t, v) => store.keys.version(t, v), FLEET_MODEL);
    await gallery.markHeads();
    const parts = await composeBiometry(
      settings,
      {
        store: biometry,
        logger,
        analyzer: options.analyzer,
        refreshGallery: (t) => gallery.refresh(parts.index, t),
        requiredModels: [FLEET_MODEL],
        pins: hubPinKeeper(store, (change) => sync.publish(change)),
      },
      stack,
    );
    const commands = hubCommands(store, sync);
    const app = createApp({
      logger,
      metrics: parts.metrics,
      tenants: biometry.tenants,
      sessions: parts.sessions,
      users: parts.users,
      capture: parts.capture,
      maxImageBytes: settings.AUTHFACE_MAX_IMAGE_BYTES,
      metricsToken: settings.AUTHFACE_METRICS_TOKEN,
      version: options.version,
      isReady: () => parts.analyzer.isReady,
      device: null,
      console: consoleRoutes(
        hubConsoleSource(store, async (tenantId, deviceId, doorId, biometryUrl) => {
          const outcome = await commands(
            tenantId,
            biometryUrl ? { device_id: deviceId, door_id: doorId, command: 'open_session', biometry_url: biometryUrl } : { device_id: deviceId, door_id: doorId, command: 'unlock' },
          );
          return { ok: outcome.ok === true, error: outcome.answered ? outcome.error : 'the door did not answer within 5 s' };
        }, (change) => sync.publish(change)),
        { logger, publicUrl: settings.publicUrl, trustedProxies: settings.AUTHFACE_TRUSTED_PROXIES, warnings },
      ),
      fleet: fleetRoutes({
        tenants: biometry.tenants,
        join: deviceJoin(store, { brokerUrl: options.deviceBrokerUrl ?? withoutCredentials(options.brokerUrl), prefix: options.prefix, brokerAdmin }),
        command: commands,
        notice: (request) => requestedNotice(store, request),
        signingKeyChallenge: (request) => signingKeyChallenge(store, request),
        registerSigningKey: (request) => registerSigningKey(store, request),
      }),
    });
    // tombstone retention: the log keeps AUTHFACE_HUB_LOG_RETENTION_DAYS; a device behind it loads a snapshot
    const compact = () =>
      store
        .compact(new Date(Date.now() - settings.AUTHFACE_HUB_LOG_RETENTION_DAYS * 86_400_000))
        .then((n) => n > 0 && logger.info({ changes: n }, 'hub: changes past the log retention removed'))
        .catch((err: Error) => logger.error({ problem: err.message }, 'hub: log compaction failed'));
    void compact();
    const compactor = setInterval(() => void compact(), COMPACT_INTERVAL_MS);
    compactor.unref();
    stack.push(() => clearInterval(compactor));
    sync.fleetCheck = fleetCheck(store, parts.index, gallery, matcher(FLEET_MODEL).duplicateThreshold);
    const { server, url } = await listen(app, settings, logger, stack);
    // `hub device add` prints the join command with it (found: http://localhost:8080 whatever the port)
    await store.recordSetting('public_url', settings.publicUrl);
    logger.info({ broker: options.brokerUrl.replace(/\/\/[^@/]*@/, '//'), prefix: options.prefix, url }, 'hub ready');
    return { store, biometry, sync, server, url, close: unwind };
  } catch (err) {
    await unwind();
    throw err;
  }
}

/**
 * An enrolment or update a door waits on: its template opened with the tenant key, compared with
 * the whole fleet's other people (the hub's index, brought up to the log first), and re-sealed at
 * the version the hub gives it (the door may not have seen the person's latest tombstone). An
 * update must start from the version the hub has: one made on an older copy is `stale_version`.
 */
function fleetCheck(
  store: HubStore,
  index: GalleryIndex,
  gallery: HubGallery,
  duplicateThreshold: number,
): FleetCheck {
  return async (tenantId, body, kind) => {
    // re-sealed under the current version (the store re-seals again if a rotation passes it before the append)
    const { key, keyVersion } = await store.keys.current(tenantId);
    const sealedWith = await store.keys.version(tenantId, body.key_version);
    let embedding: Float32Array;
    try {
      if (!sealedWith) throw new EnvelopeError('wrong_key', `no key version ${body.key_version}`);
      const binding = { tenantId, externalUserId: body.external_user_id, version: body.version, model: body.model, keyVersion: body.key_version };
      embedding = openTemplate(sealedWith.key, body.template, binding, FLEET_MODEL);
    } catch (err) {
      if (err instanceof EnvelopeError) return { ok: false, reason: err.code === 'wrong_model' ? 'wrong_model' : 'template_unreadable' };
      throw err;
    }
    const checkedThrough = await gallery.refresh(index, tenantId);
    const nearest = index.of(tenantId).gallery(FLEET_MODEL).best(embedding, body.external_user_id);
    if (nearest && nearest.score >= duplicateThreshold) return { ok: false, reason: 'duplicate_face', score: nearest.score };
    const row = await store.userState(store.pool, tenantId, body.external_user_id);
    const live = row !== undefined && !row.deleted;
    if (kind === 'enroll' && live) return { ok: false, reason: 'already_enrolled' };
    if (kind === 'update' && !live) return { ok: false, reason: 'user_not_found' };
    if (kind === 'update' && row?.version !== body.version - 1) return { ok: false, reason: 'stale_version', version: row?.version };
    const version = (row?.version ?? 0) + 1;
    const template = sealTemplate(key, embedding, { tenantId, externalUserId: body.external_user_id, version, model: FLEET_MODEL, keyVersion });
    // the further templates (of the same capture) follow it to that version; one that does not open is left out
    const templates = body.templates && (await store.resealTemplates(tenantId, { externalUserId: body.external_user_id, version: body.version }, body.templates, { version, key: { key, keyVersion } }));
    return { ok: true, body: { ...body, version, key_version: keyVersion, template, ...(templates ? { templates } : {}) }, checkedThrough };
  };
}

/** A broker URL without the hub's own credentials (what a device is told to connect to). */
function withoutCredentials(url: string): string {
  const u = new URL(url);
  u.username = '';
  u.password = '';
  return u.toString().replace(/\/$/, '');
}
