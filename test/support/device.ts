import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { SimulatedRelay } from '../../src/access/hardware.ts';
import type { FaceAnalyzer } from '../../src/biometrics/index.ts';
import { type DeviceConfig, parseDeviceConfig } from '../../src/device/config.ts';
import { setUser } from '../../src/mqtt/users-file.ts';
import { openStore } from '../../src/store/index.ts';
import { type TestService, startTestService } from './service.ts';

/** The users the embedded broker of a test device knows (src/mqtt/users-file.ts). */
export const BROKER_USERS = {
  admin: { username: 'admin', password: 'admin-password-for-tests' },
  observer: { username: 'observer', password: 'observer-password-for-tests' },
} as const;

export interface TestDevice {
  svc: TestService;
  apiKey: string;
  tenantId: string;
  dir: string;
  relay(door: string): SimulatedRelay;
  /** Stops the service and starts it again on the same data directory and device file. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

/** The header the kiosk shell adds (kiosk/policy.js), with the device's secret. */
export function kioskHeaders(device: TestDevice): Record<string, string> {
  return { 'x-authface-kiosk': fs.readFileSync(path.join(device.svc.dataDir, 'kiosk.secret'), 'utf8').trim() };
}

/**
 * A service running as a door device: a device config (simulated relays) written to a temporary
 * directory, the `default` tenant the device serves, and the service started with both. Without
 * mqtt.url the embedded broker gets a users file with BROKER_USERS (an admin and an observer).
 */
export async function startTestDevice(
  device: Record<string, unknown>,
  env: Record<string, string> = {},
  opts: { alter?: (config: DeviceConfig) => void; analyzer?: FaceAnalyzer; tenantId?: string; prepare?: (dataDir: string) => void | Promise<void> } = {},
): Promise<TestDevice> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-device-'));
  const dataDir = path.join(dir, 'data');
  const store = openStore(dataDir, undefined);
  const tenant = store.tenants.create({ id: opts.tenantId, name: 'default', allowedOrigins: ['https://app.example.com', 'http://localhost'], livenessMode: 'passive' });
  const { apiKey } = store.tenants.createKey(tenant.id);
  store.close();
  await opts.prepare?.(dataDir);
  const mqtt = (device.mqtt ?? {}) as { url?: string; embedded?: Record<string, unknown> };
  if (!mqtt.url && !mqtt.embedded?.users_file) {
    const usersFile = path.join(dir, 'broker-users');
    for (const [role, user] of Object.entries(BROKER_USERS)) setUser(usersFile, { name: user.username, role: role as 'admin' | 'observer', password: user.password });
    device = { ...device, mqtt: { ...mqtt, embedded: { ...mqtt.embedded, users_file: usersFile } } };
  }
  fs.writeFileSync(path.join(dir, 'device.yaml'), stringify(device));
  // `alter` changes the validated configuration, to reproduce what validation would now refuse
  const altered = opts.alter ? parseDeviceConfig(device) : undefined;
  if (altered) opts.alter?.(altered);
  const start = () => startTestService({ AUTHFACE_DATA_DIR: dataDir, AUTHFACE_DEVICE_CONFIG: path.join(dir, 'device.yaml'), ...env }, { device: altered, ownAnalyzer: opts.analyzer });
  const handle: TestDevice = {
    svc: await start(),
    apiKey,
    tenantId: tenant.id,
    dir,
    relay: (door) => handle.svc.service.device?.access.door(door)?.relay as SimulatedRelay,
    async restart() {
      await handle.svc.close();
      handle.svc = await start();
    },
    async close() {
      await handle.svc.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return handle;
}
