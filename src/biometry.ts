import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import type Koa from 'koa';
import { GalleryIndex, type TenantGallery } from './biometrics/gallery.ts';
import { type Embeddings, type ModelId, MATCHERS, PRIMARY_MODEL } from './biometrics/matchers/index.ts';
import { FaceAnalyzer } from './biometrics/index.ts';
import { DEFAULT_QUALITY } from './biometrics/quality.ts';
import { CaptureService, type FrameAnalyzer } from './capture/service.ts';
import type { Settings } from './config/settings.ts';
import { EventBus } from './core/events.ts';
import { type Logger, loggableError } from './core/logger.ts';
import { Metrics } from './core/metrics.ts';
import { defaultLivenessOptions } from './liveness/index.ts';
import { decisionThresholds, sameFaceLimits } from './sessions/decisions.ts';
import { SessionService } from './sessions/service.ts';
import type { Session } from './store/sessions.ts';
import type { BiometryStore } from './store/biometry-store.ts';
import { type PinKeeper, UserService } from './users/service.ts';

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
  /** The models a tenant's captures are described with now (capturedModels). */
  modelsFor(tenantId: string): readonly ModelId[];
  /** Expiry and retention, as the periodic sweeper runs them. */
  sweep(): Promise<{ expired: number; sessions: number; auditEvents: number }>;
}

export interface BiometryOptions {
  store: BiometryStore;
  logger: Logger;
  /** A shared analyzer (tests); else one is made here, and closed with the rest. */
  analyzer?: FaceAnalyzer;
  /** A device file's thresholds, over the settings'. */
  thresholds?: { match?: number; duplicate?: number; pad?: number };
  /** A session's own anti-spoofing floor (a door's `pad_threshold`), if it has one. */
  padThresholdFor?: (session: Session) => number | undefined;
  /** Where PINs of face+pin doors are set: a device's own store, the hub's log. */
  pins?: PinKeeper | null;
  /** The hub: bring a tenant's 1:N index up to the central store before a decision. */
  refreshGallery?: (tenantId: string) => Promise<number>;
  /** Models every capture describes the face with, whatever the tenant holds: the fleet's, where templates replicate. */
  requiredModels?: readonly ModelId[];
}

/** The in-memory 1:N index, with every usable template of the store. */
async function loadIndex(store: BiometryStore): Promise<GalleryIndex> {
  const byPerson = new Map<string, { tenantId: string; externalUserId: string; templates: Embeddings }>();
  for (const t of await store.users.activeTemplates()) {
    const key = JSON.stringify([t.tenantId, t.externalUserId]);
    const person = byPerson.get(key) ?? { tenantId: t.tenantId, externalUserId: t.externalUserId, templates: {} };
    person.templates[t.model] = t.embedding;
    byPerson.set(key, person);
  }
  const index = new GalleryIndex();
  for (const p of byPerson.values()) index.of(p.tenantId).upsert(p.externalUserId, p.templates);
  return index;
}

/**
 * The models a capture for this tenant describes the face with, among those the store keeps: the
 * newest it keeps (the model of new templates), those that still decide some of its people, and
 * the required ones. Once every person holds the new model's template, the old model is no longer
 * run for the tenant.
 */
export function capturedModels(gallery: TenantGallery, kept: readonly ModelId[], required: readonly ModelId[]): ModelId[] {
  const newestKept = MATCHERS.find((m) => kept.includes(m.id))?.id;
  const inUse = new Set<ModelId | undefined>([newestKept, ...gallery.models(), ...required]);
  return MATCHERS.map((m) => m.id).filter((m) => kept.includes(m) && inUse.has(m));
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

  const index = await loadIndex(store);
  logger.info({ people: index.size }, 'templates loaded');

  const thresholds = decisionThresholds(settings.AUTHFACE_TARGET_FPIR, {
    match: options.thresholds?.match ?? settings.AUTHFACE_MATCH_THRESHOLD,
    duplicate: options.thresholds?.duplicate ?? settings.AUTHFACE_DUPLICATE_THRESHOLD,
    margin: settings.AUTHFACE_IDENTIFY_MARGIN,
  });
  const sessions = new SessionService(store, index, events, {
    publicUrl: settings.publicUrl,
    ttlSeconds: settings.AUTHFACE_SESSION_TTL_SECONDS,
    thresholds,
    refreshGallery: options.refreshGallery,
  });
  const users = new UserService(store, index, events, options.pins ?? null);
  const modelsFor = (tenantId: string) => capturedModels(index.of(tenantId), store.models, options.requiredModels ?? []);
  const capture = new CaptureService(sessions, analyzer as FrameAnalyzer, events, {
    requiredFrames: 3,
    maxFrames: MAX_FRAMES_PER_SESSION,
    liveness: { ...defaultLivenessOptions(sameFaceLimits(thresholds)), padThreshold: options.thresholds?.pad ?? settings.AUTHFACE_PAD_THRESHOLD },
    // a door's own floor, else its tenant's, else the device's or the service's (liveness.padThreshold)
    padThresholdFor: async (session) => options.padThresholdFor?.(session) ?? (await store.tenants.get(session.tenantId))?.padThreshold,
    modelsFor,
  });
  const metrics = new Metrics(events, {
    galleryTemplates: () => index.size,
    engineQueue: () => analyzer.load.queued,
    engineBusy: () => analyzer.load.busy,
    identification: () =>
      index.sizes().map(({ tenantId, size, byModel }) => {
        const identify = thresholds[PRIMARY_MODEL].identify;
        return { tenantId, gallerySize: size, byModel, threshold: identify.rule(size).threshold, expectedFpir: identify.expectedFpir(size) };
      }),
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
    // a start that failed after this point (the port in use…) shut the engine down: not its failure
    (err: Error) => analyzer.closed || logger.fatal({ err: { name: err.name, message: err.message } }, 'face engine failed to start'),
  );
  return { events, index, sessions, users, capture, analyzer, metrics, modelsFor, sweep };
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
