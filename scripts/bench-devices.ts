import fs from 'node:fs';
import { TenantKeyring } from '../src/sync/keyring.ts';
import os from 'node:os';
import path from 'node:path';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { EventBus } from '../src/core/events.ts';
import { createLogger } from '../src/core/logger.ts';
import { type Store, openStore } from '../src/store/index.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { loadDeviceKey, loadSigningKey } from '../src/sync/device-key.ts';
import { publicKeyFromBase64 } from '../src/access/signed-command.ts';

/**
 * Many simulated doors in one process, for `npm run bench` (a child of it): each a store, an index
 * and a sync client of the same tenant. It first says each door's public keys (the parent registers
 * them with the hub, as a join does). Commands come over IPC: `connect` (all at once, with the hub's key),
 * `disconnect`, `until <head> <digest>` (answers when every door is at the head with that user
 * set), `close`.
 */
const [count, url, prefix, tenantId, keyHex] = process.argv.slice(2);
const logger = createLogger('silent');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-bench-doors-'));
const doors: { store: Store; index: GalleryIndex; sync: DeviceSync | null }[] = [];
for (let i = 0; i < Number(count); i++) {
  const store = openStore(path.join(root, String(i)), undefined);
  store.tenants.create({ id: tenantId, name: 'bench', allowedOrigins: [], livenessMode: 'passive' });
  doors.push({ store, index: new GalleryIndex(), sync: null });
}
const send = (message: unknown) => process.send?.(message);

/** The hub's key, given with the first `connect` (the doors learned it at join). */
let hubKey: ReturnType<typeof publicKeyFromBase64> | undefined;
process.on('message', async (message: { command: string; head?: number; digest?: string; hubKey?: string }) => {
  if (message.command === 'connect') {
    if (message.hubKey) hubKey = publicKeyFromBase64(message.hubKey);
    const key = hubKey;
    if (!key) throw new Error('bench-devices: connect first with the hub key');
    doors.forEach((d, i) => {
      d.sync = DeviceSync.start(d.store, d.index, new EventBus(), { deviceId: `sim-${i}`, tenantId, url, prefix, keyring: TenantKeyring.of(tenantId, Buffer.from(keyHex, 'hex')), hubKey: key, model: FLEET_MODEL, logger });
    });
    send({ done: 'connect' });
  } else if (message.command === 'disconnect') {
    await Promise.all(doors.map((d) => d.sync?.close()));
    for (const d of doors) d.sync = null;
    send({ done: 'disconnect' });
  } else if (message.command === 'until') {
    for (;;) {
      const behind = doors.filter((d) => d.sync?.cursor !== message.head);
      if (behind.length === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const diverged = doors.filter((d) => d.store.users.digest(tenantId).digest !== message.digest).length;
    send({ done: 'until', diverged });
  } else if (message.command === 'close') {
    await Promise.all(doors.map((d) => d.sync?.close()));
    for (const d of doors) d.store.close();
    fs.rmSync(root, { recursive: true, force: true });
    process.exit(0);
  }
});
send({ ready: doors.length, keys: doors.map((d, i) => ({ deviceId: `sim-${i}`, publicKey: loadDeviceKey(d.store.dataDir).publicKey, signingKey: loadSigningKey(d.store.dataDir).publicKey })) });
