import type http from 'node:http';
import { createApp } from '../api/app.ts';
import { composeBiometry, listen } from '../biometry.ts';
import { EMBEDDING_MODEL } from '../biometrics/embedding.ts';
import type { FaceAnalyzer } from '../biometrics/index.ts';
import type { Settings } from '../config/settings.ts';
import type { Logger } from '../core/logger.ts';
import type { BiometryStore } from '../store/biometry-store.ts';
import { postgresBiometryStore } from './biometry-store.ts';
import { HubGallery } from './gallery.ts';
import { HubStore } from './store.ts';
import { HubSync } from './sync-service.ts';

export interface HubOptions {
  databaseUrl: string;
  brokerUrl: string;
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
    const store = await HubStore.open(options.databaseUrl, (err) => logger.warn({ problem: err.message }, 'hub: a database connection was dropped; it is replaced on the next query'));
    stack.push(() => store.close());
    const sync = await HubSync.start(store, { url: options.brokerUrl, prefix: options.prefix, logger });
    stack.push(() => sync.close());
    const tenantKey = (tenantId: string) => store.tenantKey(tenantId, options.masterKey);
    const biometry = postgresBiometryStore(store, {
      tenantKey,
      model: EMBEDDING_MODEL,
      onSequenced: (change) => sync.publish(change),
    });
    const gallery = new HubGallery(store, async (t) => (await tenantKey(t)).key, EMBEDDING_MODEL);
    await gallery.markHeads();
    const parts = await composeBiometry(settings, { store: biometry, logger, analyzer: options.analyzer, refreshGallery: (t) => gallery.refresh(parts.index, t) }, stack);
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
    });
    const { server, url } = await listen(app, settings, logger, stack);
    logger.info({ broker: options.brokerUrl.replace(/\/\/[^@/]*@/, '//'), prefix: options.prefix, url }, 'hub ready');
    return { store, biometry, sync, server, url, close: unwind };
  } catch (err) {
    await unwind();
    throw err;
  }
}
