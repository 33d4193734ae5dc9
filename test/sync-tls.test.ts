import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { normalize } from '../src/biometrics/embedding.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { EventBus } from '../src/core/events.ts';
import { createLogger } from '../src/core/logger.ts';
import { HubStore } from '../src/hub/store.ts';
import { HubSync } from '../src/hub/sync-service.ts';
import { type Store, openStore } from '../src/store/index.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { sealTemplate } from '../src/sync/envelope.ts';
import { authface } from './support/cli.ts';
import { until } from './support/mqtt.ts';
import { type TlsMosquitto, startTlsMosquitto } from './support/tls.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';
import { joinTestDoor } from './support/fleet.ts';

/**
 * TLS to the broker is supported on top of the protocol's own encryption and MACs: the hub and a
 * door replicate through a Mosquitto that speaks only mqtts://, each verifying the broker's
 * certificate against the CA it was given; a door without that CA does not connect.
 */
describe('fleet sync over TLS (mqtts://, a private CA)', function () {
  this.timeout(60_000);
  const logger = createLogger('silent');
  const prefix = `authface-tls-${process.pid}`;
  const tenantId = crypto.randomUUID();
  const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.sin(i * 2.7 + k)));
  let broker: TlsMosquitto;
  let db: TestDatabase;
  let hubStore: HubStore;
  let hub: HubSync;
  let tenantKey: Buffer;
  const dirs: string[] = [];
  const syncs: DeviceSync[] = [];

  const door = async (name: string, ca: Buffer | undefined): Promise<{ store: Store; sync: DeviceSync; problems: string[] }> => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-tls-door-'));
    dirs.push(dir);
    const store = openStore(dir, undefined);
    store.tenants.create({ id: tenantId, name: 'acme', allowedOrigins: [], livenessMode: 'passive' });
    const problems: string[] = [];
    const watching = { ...logger, warn: (o: { problem?: string }) => problems.push(String(o.problem)) } as unknown as typeof logger;
    const { syncOptions } = await joinTestDoor(hubStore, { tenantId, deviceId: name, dataDir: dir, brokerUrl: broker.url, prefix });
    const sync = DeviceSync.start(store, new GalleryIndex(), new EventBus(), { ...syncOptions, url: broker.url, prefix, broker: ca ? { ca } : {}, model: FLEET_MODEL, logger: watching });
    syncs.push(sync);
    return { store, sync, problems };
  };

  before(async function () {
    broker = await startTlsMosquitto();
    db = await createTestDatabase();
    hubStore = await HubStore.open(db.url, { masterKey: crypto.randomBytes(32) });
    await hubStore.createTenant(tenantId, 'acme');
    tenantKey = (await hubStore.keys.current(tenantId)).key;
    hub = await HubSync.start(hubStore, { url: broker.url, prefix, logger, ca: broker.ca });
  });
  after(async function () {
    for (const s of syncs) await s.close();
    await hub?.close();
    await hubStore?.close();
    await db?.drop();
    await broker?.close();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  it('a door with the CA replicates both ways through the TLS broker; one without it never connects', async function () {
    const trusted = await door('trusted', broker.ca);
    const stranger = await door('stranger', undefined);
    await until(() => trusted.sync.connected, 15_000, 'the door with the CA on the broker');
    const template = sealTemplate(tenantKey, face(1), { tenantId, externalUserId: 'alice', version: 1, model: FLEET_MODEL, keyVersion: 1 });
    assert.equal((await hub.submit(tenantId, { kind: 'user.upsert', external_user_id: 'alice', version: 1, model: FLEET_MODEL, key_version: 1, template })).status, 'sequenced');
    await until(() => trusted.store.users.get(tenantId, 'alice') !== undefined, 15_000, "the hub's change at the door");
    trusted.store.users.enroll(tenantId, 'bob', { [FLEET_MODEL]: face(2) });
    await until(async () => trusted.sync.pending() === 0 && (await hubStore.digest(tenantId)) === trusted.store.users.digest(tenantId).digest, 15_000, "the door's change at the hub");
    assert.equal(stranger.sync.connected, false);
    assert.ok(stranger.problems.some((p) => /self[- ]signed|unable to verify|certificate/i.test(p)), stranger.problems.join('; '));
    assert.equal(stranger.store.users.get(tenantId, 'alice'), undefined);
  });

  it('authface hub serve says plainly when the CA file of AUTHFACE_HUB_BROKER_CA_FILE cannot be read', async function () {
    const env = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex'), AUTHFACE_HUB_BROKER_CA_FILE: '/nonexistent/ca.pem' };
    await assert.rejects(authface(['hub', 'serve', '--database-url', db.url, '--broker-url', broker.url], env), (err: { stderr: string }) =>
      /AUTHFACE_HUB_BROKER_CA_FILE: cannot read \/nonexistent\/ca\.pem \(ENOENT\)/.test(err.stderr),
    );
  });
});
