import fs from 'node:fs';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DoorHardware } from './access/hardware.ts';
import { createApp } from './api/app.ts';
import { GalleryIndex } from './biometrics/gallery.ts';
import { IdentifyPolicy } from './biometrics/identify-policy.ts';
import { FaceAnalyzer } from './biometrics/index.ts';
import { DEFAULT_QUALITY } from './biometrics/quality.ts';
import { CaptureService, type FrameAnalyzer } from './capture/service.ts';
import type { Settings } from './config/settings.ts';
import { EventBus } from './core/events.ts';
import { defaultLivenessOptions } from './liveness/index.ts';
import { type DeviceConfig, loadDeviceConfig } from './device/config.ts';
import { type Device, startDevice } from './device/index.ts';
import { type Logger, createLogger, loggableError } from './core/logger.ts';
import { Metrics } from './core/metrics.ts';
import { SessionService } from './sessions/service.ts';
import { PID_FILE, runningService } from './store/backup.ts';
import { type Store, StoreError, openStore } from './store/index.ts';
import { UserService } from './users/service.ts';

export const VERSION = (
  JSON.parse(fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'package.json'), 'utf8')) as {
    version: string;
  }
).version;

/** Enough for an active challenge (movements, six colours, frontal frames) at a few frames a second. */
const MAX_FRAMES_PER_SESSION = 120;
const SWEEP_INTERVAL_MS = 15_000;

export interface Service {
  server: http.Server;
  device: Device | null;
  url: string;
  store: Store;
  events: EventBus;
  index: GalleryIndex;
  sessions: SessionService;
  capture: CaptureService;
  analyzer: FaceAnalyzer;
  /** Expiry and retention, as the periodic sweeper runs them. */
  sweep(): { expired: number; sessions: number; auditEvents: number };
  close(): Promise<void>;
}

export interface ServiceOverrides {
  logger?: Logger;
  /** Share one analyzer between several services (tests); it is then not closed with the service. */
  analyzer?: FaceAnalyzer;
  /** An already validated device configuration (else AUTHFACE_DEVICE_CONFIG is read, if set). */
  device?: DeviceConfig | null;
}

/**
 * Wires the service together and starts listening: the store, the face engine workers, the 1:N
 * index loaded from the stored templates, the session and capture services, and the HTTP app.
 */
export async function startService(settings: Settings, overrides: ServiceOverrides = {}): Promise<Service> {
  const logger = overrides.logger ?? createLogger(settings.LOG_LEVEL);
  // undone in reverse order when the start fails half-way, or when the service stops
  const stack: (() => void | Promise<void>)[] = [];
  const unwind = async () => {
    for (const undo of stack.splice(0).reverse()) await undo();
  };
  try {
    const deviceConfig = overrides.device !== undefined ? overrides.device : settings.AUTHFACE_DEVICE_CONFIG ? loadDeviceConfig(settings.AUTHFACE_DEVICE_CONFIG) : null;
    // the doors are locked before anything else happens (a template that takes long to load, or
    // a store that cannot open, must not leave a relay in whatever state the last run left it)
    const hardware = deviceConfig ? DoorHardware.open(deviceConfig.doors) : null;
    if (hardware) {
      stack.push(() => hardware.close());
      logger.info({ doors: deviceConfig?.doors.map((d) => d.id) }, 'door relays set to off');
    }

    const store = openStore(settings.dataDir, settings.AUTHFACE_MASTER_KEY);
    stack.push(() => store.close());
    const pidFile = claimPidFile(settings.dataDir);
    stack.push(() => fs.rmSync(pidFile, { force: true }));
    const events = new EventBus((name, err) => logger.error({ event: name, err: loggableError(err) }, 'event listener failed'));
    const analyzer =
      overrides.analyzer ??
      new FaceAnalyzer({
        backend: settings.AUTHFACE_BACKEND,
        maxPixels: settings.AUTHFACE_MAX_IMAGE_PIXELS,
        maxSide: settings.AUTHFACE_MAX_IMAGE_SIDE,
        maxAspectRatio: settings.AUTHFACE_MAX_ASPECT_RATIO,
        quality: DEFAULT_QUALITY,
        workers: settings.AUTHFACE_WORKERS,
        queueSize: settings.AUTHFACE_QUEUE_SIZE,
        frameTimeoutMs: settings.AUTHFACE_FRAME_TIMEOUT_MS,
      });
    if (!overrides.analyzer) stack.push(() => analyzer.close());

    const index = new GalleryIndex();
    for (const t of store.users.activeTemplates()) index.of(t.tenantId).upsert(t.externalUserId, t.embedding);
    logger.info({ templates: index.size }, 'templates loaded');
    const unusable = store.users.needingReenrolment().length;
    if (unusable > 0) {
      logger.warn({ users: unusable }, 'a stored template could not be opened (damaged, altered or of another model): these users must enrol again (`authface doctor` names them)');
    }

    // a device's own file may set its thresholds (a busy lobby may want a stricter match)
    const match = deviceConfig?.thresholds.match ?? settings.AUTHFACE_MATCH_THRESHOLD;
    const thresholds = {
      match,
      duplicate: deviceConfig?.thresholds.duplicate ?? settings.AUTHFACE_DUPLICATE_THRESHOLD,
      identify: new IdentifyPolicy({ targetFpir: settings.AUTHFACE_TARGET_FPIR, minThreshold: match, margin: settings.AUTHFACE_IDENTIFY_MARGIN }),
    };
    const sessions = new SessionService(store.db, store.sessions, store.users, store.audit, index, events, {
      publicUrl: settings.publicUrl,
      ttlSeconds: settings.AUTHFACE_SESSION_TTL_SECONDS,
      thresholds,
    });
    const users = new UserService(store, index, events);
    const capture = new CaptureService(sessions, analyzer as FrameAnalyzer, events, {
      requiredFrames: 3,
      maxFrames: MAX_FRAMES_PER_SESSION,
      sameFaceThreshold: thresholds.match,
      liveness: defaultLivenessOptions(thresholds.match),
    });
    const metrics = new Metrics(events, {
      galleryTemplates: () => index.size,
      engineQueue: () => analyzer.load.queued,
      engineBusy: () => analyzer.load.busy,
      identification: () =>
        index.sizes().map(({ tenantId, size }) => ({ tenantId, gallerySize: size, threshold: thresholds.identify.rule(size).threshold, expectedFpir: thresholds.identify.expectedFpir(size) })),
    });
    events.on('session.finished', (e) =>
      logger.info({ tenant: e.tenantId, flow: e.flow, status: e.status, reason: e.reason, event: e.eventId }, 'session finished'),
    );

    const device = deviceConfig && hardware ? await startDevice(deviceConfig, { hardware, store, index, sessions, events, logger, publicUrl: settings.publicUrl, version: VERSION }) : null;
    if (device) stack.push(() => device.close());

    const app = createApp({
      logger,
      metrics,
      tenants: store.tenants,
      sessions,
      users,
      capture,
      maxImageBytes: settings.AUTHFACE_MAX_IMAGE_BYTES,
      metricsToken: settings.AUTHFACE_METRICS_TOKEN,
      version: VERSION,
      isReady: () => analyzer.isReady,
      device: device && {
        config: device.config,
        kiosk: device.kiosk,
        kioskSecret: device.kioskSecret,
        access: device.access,
        events,
        tenants: store.tenants,
        mqttLink: () => device.mqttLink(),
        version: VERSION,
      },
    });

    /** Expires sessions whose link is past its lifetime, and removes rows past the retention. */
    const sweep = () => {
      const expired = sessions.sweepExpired();
      const purged = store.purgeBefore(new Date(Date.now() - settings.AUTHFACE_RETENTION_DAYS * 86_400_000).toISOString());
      return { expired, ...purged };
    };
    const sweeper = setInterval(() => {
      try {
        sweep();
      } catch (err) {
        logger.error({ err: loggableError(err) }, 'sweep failed');
      }
    }, SWEEP_INTERVAL_MS);
    sweeper.unref();
    stack.push(() => clearInterval(sweeper));

    analyzer.ready().then(
      () => logger.info({ templates: index.size }, 'face engine ready'),
      (err: Error) => logger.fatal({ err: { name: err.name, message: err.message } }, 'face engine failed to start'),
    );

    const server = app.listen(settings.PORT, settings.HOST);
    server.requestTimeout = 30_000;
    server.headersTimeout = 10_000;
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    stack.push(async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    });
    const address = server.address() as AddressInfo;
    const url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
    logger.info({ url, publicUrl: settings.publicUrl, dataDir: settings.dataDir }, 'listening');

    return { server, device, url, store, events, index, sessions, capture, analyzer, sweep, close: unwind };
  } catch (err) {
    await unwind();
    throw err;
  }
}

/**
 * `<dataDir>/authface.pid`: tells `authface restore` that a service is using this data directory.
 * A pid file left by a process that is gone is taken over.
 */
function claimPidFile(dataDir: string): string {
  const file = path.join(dataDir, PID_FILE);
  const other = runningService(dataDir);
  if (other !== null && other !== process.pid) {
    throw new StoreError(`another service (pid ${other}) is using ${dataDir}: stop it first, or give this one its own AUTHFACE_DATA_DIR`);
  }
  fs.writeFileSync(file, `${process.pid}\n`, { mode: 0o600 });
  return file;
}
