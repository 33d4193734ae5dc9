import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { DoorHardware } from './access/hardware.ts';
import { createApp } from './api/app.ts';
import { consoleRoutes } from './console/routes.ts';
import type { ModelId } from './biometrics/matchers/index.ts';
import { FLEET_MODEL } from './sync/fleet-model.ts';
import { deviceConsoleSource } from './console/device-source.ts';
import { composeBiometry, listen } from './biometry.ts';
import type { GalleryIndex } from './biometrics/gallery.ts';
import type { FaceAnalyzer } from './biometrics/index.ts';
import type { CaptureService } from './capture/service.ts';
import type { Settings } from './config/settings.ts';
import type { EventBus } from './core/events.ts';
import { type DeviceConfig, doorPadThreshold, loadDeviceConfig } from './device/config.ts';
import { type Device, startDevice } from './device/index.ts';
import { type Logger, createLogger } from './core/logger.ts';
import type { SessionService } from './sessions/service.ts';
import { PID_FILE, runningService } from './store/backup.ts';
import { type Store, StoreError, openStore } from './store/index.ts';
import { sqliteBiometryStore } from './store/sqlite-biometry.ts';

import { VERSION } from './version.ts';

export { VERSION } from './version.ts';

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
  /** The models a tenant's captures are described with now. */
  modelsFor(tenantId: string): readonly ModelId[];
  /** Expiry and retention, as the periodic sweeper runs them. */
  sweep(): Promise<{ expired: number; sessions: number; auditEvents: number }>;
  close(): Promise<void>;
}

export interface ServiceOverrides {
  logger?: Logger;
  /** Share one analyzer between several services (tests); it is then not closed with the service. */
  analyzer?: FaceAnalyzer;
  /** An already validated device configuration (else AUTHFACE_DEVICE_CONFIG is read, if set). */
  device?: DeviceConfig | null;
  /** The models whose templates are kept (default: all). Tests make a data directory of the release before MobileFaceNet with the first model only. */
  models?: readonly ModelId[];
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

    const store = openStore(settings.dataDir, settings.AUTHFACE_MASTER_KEY, overrides.models ? { models: overrides.models } : {});
    stack.push(() => store.close());
    const pidFile = claimPidFile(settings.dataDir);
    stack.push(() => fs.rmSync(pidFile, { force: true }));
    const biometryStore = sqliteBiometryStore(store);
    // a device's own file may set its thresholds (a busy lobby may want a stricter match)
    const { events, index, sessions, users, capture, analyzer, metrics, sweep, modelsFor } = await composeBiometry(
      settings,
      // a fleet door describes every face with the fleet's model too: its templates replicate
      { store: biometryStore, logger, analyzer: overrides.analyzer, thresholds: deviceConfig?.thresholds, padThresholdFor: deviceConfig ? (session) => doorPadThreshold(deviceConfig, session.doorId) : undefined, pins: store.pins, requiredModels: deviceConfig?.sync ? [FLEET_MODEL] : [] },
      stack,
    );
    // loading the index flagged the templates that do not open
    const unusable = store.users.needingReenrolment().length;
    if (unusable > 0) {
      logger.warn({ users: unusable }, 'a stored template could not be opened (damaged, altered or of another model): these users must enrol again (`authface doctor` names them)');
    }

    const device = deviceConfig && hardware ? await startDevice(deviceConfig, { hardware, store, index, sessions, users, events, logger, publicUrl: settings.publicUrl, version: VERSION }) : null;
    if (device) stack.push(() => device.close());

    const app = createApp({
      logger,
      metrics,
      tenants: biometryStore.tenants,
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
        outOfService: () => device.outOfService(),
        version: VERSION,
      },
      // the device's own console: its doors, people and audit trail
      console: device
        ? consoleRoutes(deviceConsoleSource({ config: device.config, store, access: device.access, kiosk: device.kiosk, version: VERSION }), { logger, publicUrl: settings.publicUrl, trustedProxies: settings.AUTHFACE_TRUSTED_PROXIES })
        : undefined,
    });

    const { server, url } = await listen(app, settings, logger, stack);
    return { server, device, url, store, events, index, sessions, capture, analyzer, modelsFor, sweep, close: unwind };
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
