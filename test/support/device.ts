import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { SimulatedRelay } from '../../src/access/hardware.ts';
import { type DeviceConfig, parseDeviceConfig } from '../../src/device/config.ts';
import { openStore } from '../../src/store/index.ts';
import { type TestService, startTestService } from './service.ts';

export interface TestDevice {
  svc: TestService;
  apiKey: string;
  tenantId: string;
  dir: string;
  relay(door: string): SimulatedRelay;
  close(): Promise<void>;
}

/**
 * A service running as a door device: a device config (simulated relays) written to a temporary
 * directory, the `default` tenant the device serves, and the service started with both.
 */
export async function startTestDevice(
  device: Record<string, unknown>,
  env: Record<string, string> = {},
  opts: { alter?: (config: DeviceConfig) => void } = {},
): Promise<TestDevice> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-device-'));
  const dataDir = path.join(dir, 'data');
  const store = openStore(dataDir, undefined);
  const tenant = store.tenants.create({ name: 'default', allowedOrigins: ['https://app.example.com', 'http://localhost'], livenessMode: 'passive' });
  const { apiKey } = store.tenants.createKey(tenant.id);
  store.close();
  fs.writeFileSync(path.join(dir, 'device.yaml'), stringify(device));
  // `alter` changes the validated configuration, to reproduce what validation would now refuse
  const altered = opts.alter ? parseDeviceConfig(device) : undefined;
  if (altered) opts.alter?.(altered);
  const svc = await startTestService({ AUTHFACE_DATA_DIR: dataDir, AUTHFACE_DEVICE_CONFIG: path.join(dir, 'device.yaml'), ...env }, { device: altered });
  return {
    svc,
    apiKey,
    tenantId: tenant.id,
    dir,
    relay: (door) => svc.service.device?.access.door(door)?.relay as SimulatedRelay,
    async close() {
      await svc.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
