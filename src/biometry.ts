import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import type Koa from 'koa';
import { GalleryIndex } from './biometrics/gallery.ts';
import { IdentifyPolicy } from './biometrics/identify-policy.ts';
import { FaceAnalyzer } from './biometrics/index.ts';
import { DEFAULT_QUALITY } from './biometrics/quality.ts';
import { CaptureService, type FrameAnalyzer } from './capture/service.ts';
import type { Settings } from './config/settings.ts';
import { EventBus } from './core/events.ts';
import { type Logger, loggableError } from './core/logger.ts';
import { Metrics } from './core/metrics.ts';
import { defaultLivenessOptions } from './liveness/index.ts';
import { SessionService } from './sessions/service.ts';
import type { BiometryStore } from './store/biometry-store.ts';
import type { PinStore } from './store/pins.ts';
import { UserService } from './users/service.ts';

/** Enough for an active challenge (movements, six colours, frontal frames) at a few frames a second. */
const MAX_FRAMES_PER_SESSION = 120;
const SWEEP_INTERVAL_MS = 15_000;

/** The parts of every /biometry/v1 server, a device's or the hub's, whatever store is under them. */
export interface Biometry {
  events: EventBus;
  index: GalleryIndex;
  sessions: SessionService;
  users: UserService;
  capture: CaptureService;
  analyzer: FaceAnalyzer;
  metrics: Metrics;
  /** Expiry and retention, as the periodic sweeper runs them. */
  sweep(): Promise<{ expired: number; sessions: number; auditEvents: number }>;
}

export interface BiometryOptions {
  store: BiometryStore;
  logger: Logger;
  /** A shared analyzer (tests); else one is made here, and closed with the rest. */
  analyzer?: FaceAnalyzer;
  /** A device file's thresholds, over the settings'. */
  thresholds?: { match?: number; duplicate?: number };
  /** The device's PINs of face+pin doors (the hub has none). */
  pins?: PinStore | null;
  /** The hub: bring a tenant's 1:N index up to the central store before a decision. */
  refreshGallery?: (tenantId: string) => Promise<number>;
}

/**
 * Builds the face engine, the 1:N index (loaded from the store's templates), the session, user
 * and capture services and the metrics, and starts the sweeper. `cleanup` collects what must be
 * undone when the server stops, in the order it must happen backwards.
 */
export async function composeBiometry(settings: Settings, options: BiometryOptions, cleanup: (() => void | Promise<void>)[]): Promise<Biometry> {
  const { store, logger } = options;
  const events = new EventBus((name, err) => logger.error({ event: name, err: loggableError(err) }, 'event listener failed'));
  const analyzer =
    options.analyzer ??
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
  if (!options.analyzer) cleanup.push(() => analyzer.close());

  const index = new GalleryIndex();
  for (const t of await store.users.activeTemplates()) index.of(t.tenantId).upsert(t.externalUserId, t.embedding);
  logger.info({ templates: index.size }, 'templates loaded');

  const match = options.thresholds?.match ?? settings.AUTHFACE_MATCH_THRESHOLD;
  const thresholds = {
    match,
    duplicate: options.thresholds?.duplicate ?? settings.AUTHFACE_DUPLICATE_THRESHOLD,
    identify: new IdentifyPolicy({ targetFpir: settings.AUTHFACE_TARGET_FPIR, minThreshold: match, margin: settings.AUTHFACE_IDENTIFY_MARGIN }),
  };
  const sessions = new SessionService(store, index, events, {
    publicUrl: settings.publicUrl,
    ttlSeconds: settings.AUTHFACE_SESSION_TTL_SECONDS,
    thresholds,
    refreshGallery: options.refreshGallery,
  });
  const users = new UserService(store, index, events, options.pins ?? null);
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
  events.on('session.finished', (e) => logger.info({ tenant: e.tenantId, flow: e.flow, status: e.status, reason: e.reason, event: e.eventId }, 'session finished'));

  /** Expires sessions whose link is past its lifetime, and removes rows past the retention. */
  const sweep = async () => {
    const expired = await sessions.sweepExpired();
    const purged = await store.purgeBefore(new Date(Date.now() - settings.AUTHFACE_RETENTION_DAYS * 86_400_000).toISOString());
    return { expired, ...purged };
  };
  const sweeper = setInterval(() => void sweep().catch((err: unknown) => logger.error({ err: loggableError(err) }, 'sweep failed')), SWEEP_INTERVAL_MS);
  sweeper.unref();
  cleanup.push(() => clearInterval(sweeper));

  analyzer.ready().then(
    () => logger.info({ templates: index.size }, 'face engine ready'),
    (err: Error) => logger.fatal({ err: { name: err.name, message: err.message } }, 'face engine failed to start'),
  );
  return { events, index, sessions, users, capture, analyzer, metrics, sweep };
}

/** Listens on HOST:PORT; returns the server and its URL, and queues its closing in `cleanup`. */
export async function listen(app: Koa, settings: Settings, logger: Logger, cleanup: (() => void | Promise<void>)[]): Promise<{ server: http.Server; url: string }> {
  const server = app.listen(settings.PORT, settings.HOST);
  server.requestTimeout = 30_000;
  server.headersTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  cleanup.push(async () => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
  });
  const address = server.address() as AddressInfo;
  const url = `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
  logger.info({ url, publicUrl: settings.publicUrl }, 'listening');
  return { server, url };
}
