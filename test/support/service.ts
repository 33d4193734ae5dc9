import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { DEFAULT_ANALYZER_LIMITS, FaceAnalyzer } from '../../src/biometrics/index.ts';
import type { ModelId } from '../../src/biometrics/matchers/index.ts';
import { DEFAULT_QUALITY } from '../../src/biometrics/quality.ts';
import { loadSettings } from '../../src/config/settings.ts';
import type { DeviceConfig } from '../../src/device/config.ts';
import { type Service, startService } from '../../src/service.ts';
import type { LivenessMode } from '../../src/store/tenants.ts';

let analyzer: FaceAnalyzer | undefined;

/** One set of engine workers for the whole test run (loading models takes a few seconds). */
export async function sharedAnalyzer(): Promise<FaceAnalyzer> {
  if (!analyzer) {
    analyzer = new FaceAnalyzer({ backend: 'auto', maxPixels: 25_000_000, quality: DEFAULT_QUALITY, ...DEFAULT_ANALYZER_LIMITS, workers: 2, queueSize: 32 });
    await analyzer.ready();
  }
  return analyzer;
}

export async function closeSharedAnalyzer(): Promise<void> {
  await analyzer?.close();
  analyzer = undefined;
}

export interface TestService {
  url: string;
  service: Service;
  dataDir: string;
  /** Every log line the service wrote, as text. */
  logs: () => string;
  tenant(opts?: { origins?: string[]; liveness?: LivenessMode }): { id: string; apiKey: string; keyId: string };
  close(): Promise<void>;
}

/** A real service on a free port with its own temporary data directory. */
export async function startTestService(
  env: Record<string, string> = {},
  opts: { ownAnalyzer?: FaceAnalyzer; device?: DeviceConfig; models?: readonly ModelId[] } = {},
): Promise<TestService> {
  const ownDir = env.AUTHFACE_DATA_DIR === undefined;
  const dataDir = env.AUTHFACE_DATA_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), 'authface-test-'));
  const settings = loadSettings({ PORT: '0', LOG_LEVEL: 'debug', ...env, AUTHFACE_DATA_DIR: dataDir });
  let logText = '';
  const sink = new Writable({
    write(chunk, _enc, done) {
      logText += chunk.toString();
      done();
    },
  });
  const logger = pino({ level: 'debug' }, sink);
  const service = await startService(settings, { logger, analyzer: opts.ownAnalyzer ?? (await sharedAnalyzer()), device: opts.device, models: opts.models });
  const url = service.url;
  return {
    url,
    service,
    dataDir,
    logs: () => logText,
    tenant({ origins = ['http://localhost', 'https://app.example.com'], liveness = 'passive' } = {}) {
      const t = service.store.tenants.create({ name: 'test', allowedOrigins: origins, livenessMode: liveness });
      const { apiKey, keyId } = service.store.tenants.createKey(t.id);
      return { id: t.id, apiKey, keyId };
    },
    async close() {
      await service.close();
      if (ownDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
