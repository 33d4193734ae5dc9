import fs from 'node:fs';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createApp } from './api/app.ts';
import { GalleryIndex } from './biometrics/gallery.ts';
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
import { type Store, openStore } from './store/index.ts';
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
  const store = openStore(settings.dataDir, settings.AUTHFACE_MASTER_KEY);
  // a feature that fails on an event is logged; it never undoes or hides what was announced
  const events = new EventBus((name, err) => logger.error({ event: name, err: loggableError(err) }, 'event listener failed'));
  const analyzer =
    overrides.analyzer ??
    new FaceAnalyzer({
      backend: settings.AUTHFACE_BACKEND,
      maxPixels: settings.AUTHFACE_MAX_IMAGE_PIXELS,
      quality: DEFAULT_QUALITY,
      workers: settings.AUTHFACE_WORKERS,
      queueSize: settings.AUTHFACE_QUEUE_SIZE,
    });

  const index = new GalleryIndex();
  for (const t of store.users.activeTemplates()) index.of(t.tenantId).upsert(t.externalUserId, t.embedding);

  const deviceConfig = overrides.device !== undefined ? overrides.device : settings.AUTHFACE_DEVICE_CONFIG ? loadDeviceConfig(settings.AUTHFACE_DEVICE_CONFIG) : null;
  // a device's own file may set its thresholds (a busy lobby may want a stricter match)
  const thresholds = {
    match: deviceConfig?.thresholds.match ?? settings.AUTHFACE_MATCH_THRESHOLD,
    duplicate: deviceConfig?.thresholds.duplicate ?? settings.AUTHFACE_DUPLICATE_THRESHOLD,
  };
  const sessions = new SessionService(store.db, store.sessions, store.users, store.audit, index, events, {
    publicUrl: settings.publicUrl,
    ttlSeconds: settings.AUTHFACE_SESSION_TTL_SECONDS,
    thresholds,
  });
  const users = new UserService(store.db, store.users, store.audit, index, events);
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
  });
  events.on('session.finished', (e) =>
    logger.info({ tenant: e.tenantId, flow: e.flow, status: e.status, reason: e.reason, event: e.eventId }, 'session finished'),
  );

  const device = deviceConfig
    ? await startDevice(deviceConfig, { store, sessions, events, logger, publicUrl: settings.publicUrl, version: VERSION })
    : null;

  const app = createApp({
    logger,
    metrics,
    tenants: store.tenants,
    sessions,
    users,
    capture,
    maxImageBytes: settings.AUTHFACE_MAX_IMAGE_BYTES,
    version: VERSION,
    isReady: () => analyzer.isReady,
    device: device && { config: device.config, kiosk: device.kiosk, access: device.access, events, tenants: store.tenants },
  });

  const sweeper = setInterval(() => {
    try {
      sessions.sweepExpired();
    } catch (err) {
      logger.error({ err: { name: (err as Error).name } }, 'expiry sweep failed');
    }
  }, SWEEP_INTERVAL_MS);
  sweeper.unref();

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
  const address = server.address() as AddressInfo;
  const url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
  logger.info({ url, publicUrl: settings.publicUrl, dataDir: settings.dataDir }, 'listening');

  return {
    server,
    device,
    url,
    store,
    events,
    index,
    sessions,
    capture,
    analyzer,
    async close() {
      clearInterval(sweeper);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      await device?.close();
      if (!overrides.analyzer) await analyzer.close();
      store.close();
    },
  };
}
