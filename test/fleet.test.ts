import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { EMBEDDING_MODEL } from '../src/biometrics/embedding.ts';
import { createLogger } from '../src/core/logger.ts';
import { HubStore } from '../src/hub/store.ts';
import { HubSync } from '../src/hub/sync-service.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { newTenantKey, sealTemplate } from '../src/sync/envelope.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import { Client } from './support/client.ts';
import { type TestDevice, startTestDevice } from './support/device.ts';
import { testBroker, until } from './support/mqtt.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';

/**
 * Enrol once, open every door: a hub on a real PostgreSQL and two devices (each a whole service
 * with the real engine) on the real Mosquitto, replicating through the hub's sequenced log.
 */
describe('fleet: a hub and two doors replicate through PostgreSQL and Mosquitto', function () {
  this.timeout(120_000);
  const tenantId = crypto.randomUUID();
  const tenantKey = newTenantKey();
  const prefix = `authface-fleet-${process.pid}`;
  const logger = createLogger('silent');
  let db: TestDatabase;
  let hubStore: HubStore;
  let hub: HubSync | undefined;
  let url: string;
  let img: Photos;
  const doors: { device: TestDevice; sync: DeviceSync; api: Client }[] = [];

  const startSync = (device: TestDevice, deviceId: string) =>
    DeviceSync.start(device.svc.service.store, device.svc.service.index, device.svc.service.events, { deviceId, tenantId, url, prefix, tenantKey, keyVersion: 1, model: EMBEDDING_MODEL, logger });
  const startHub = () => HubSync.start(hubStore, { url, prefix, logger });
  const knows = (door: number, id: string) => doors[door].device.svc.service.store.users.get(tenantId, id) !== undefined;
  const identify = async (door: number, photo: Buffer) => (await doors[door].api.run('identify', thrice(photo))).result;

  before(async function () {
    img = await photos();
    url = (await testBroker()).url;
    db = await createTestDatabase();
    hubStore = await HubStore.open(db.url);
    await hubStore.createTenant(tenantId, 'acme');
    hub = await startHub();
    for (const name of ['front', 'back']) {
      const device = await startTestDevice(
        { device_id: `${name}-${process.pid}`, liveness: 'passive', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { embedded: { host: '127.0.0.1', port: 0 } } },
        {},
        { tenantId },
      );
      doors.push({ device, sync: startSync(device, name), api: new Client(device.svc.url, device.apiKey) });
    }
    await until(() => doors.every((d) => d.sync.connected), 10_000, 'both doors on the broker');
  });
  after(async function () {
    for (const d of doors) {
      await d.sync.close().catch(() => undefined);
      await d.device.close();
    }
    await hub?.close();
    // leave no retained head behind on the shared broker
    const mqtt = await import('mqtt');
    const c = await mqtt.default.connectAsync(url, { reconnectPeriod: 0 });
    await c.publishAsync(syncTopics(prefix, tenantId).head, '', { retain: true });
    await c.endAsync();
    await hubStore?.close();
    await db?.drop();
  });

  it('a person enrolled at the front door is identified at the back door', async function () {
    const started = performance.now();
    assert.equal((await doors[0].api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
    await until(() => knows(1, 'alice'), 10_000, 'the back door learning alice');
    console.log(`      enrolment at the front door → known at the back door: ${Math.round(performance.now() - started)} ms (including the capture)`);
    const result = await identify(1, img.personA[1]);
    assert.deepEqual([result.status, result.external_user_id], ['success', 'alice']);
    assert.equal(await hubStore.headSeq(tenantId), 1);
    assert.deepEqual([doors[0].sync.cursor, doors[1].sync.cursor], [1, 1]);
  });

  it('an update at the back door gives the front door the new template', async function () {
    assert.equal((await doors[1].api.run('update_embedding', thrice(img.personA[2]), { externalUserId: 'alice' })).result.status, 'success');
    await until(() => doors[0].device.svc.service.store.users.get(tenantId, 'alice')?.version === 2, 10_000, 'version 2 at the front door');
    assert.equal(doors[0].sync.pending() + doors[1].sync.pending(), 0, 'every change acknowledged');
  });

  it('a deletion at the front door: gone at the back door and at the hub', async function () {
    assert.equal((await doors[0].api.post('/biometry/v1/delete-user', { external_user_id: 'alice' })).status, 200);
    await until(() => !knows(1, 'alice'), 10_000, 'alice gone at the back door');
    assert.equal(doors[1].device.svc.service.index.of(tenantId).size, 0);
    const central = await hubStore.pool.query('SELECT deleted, template FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2', [tenantId, 'alice']);
    assert.deepEqual(central.rows[0], { deleted: true, template: null });
    assert.equal((await identify(1, img.personA[1])).status, 'fail');
  });

  it('a door that was offline catches up on reconnect: enrolments and deletions it missed', async function () {
    await doors[1].sync.close();
    assert.equal((await doors[0].api.run('enroll', thrice(img.personB), { externalUserId: 'bob' })).result.status, 'success');
    assert.equal((await doors[0].api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
    assert.equal((await doors[0].api.post('/biometry/v1/delete-user', { external_user_id: 'alice' })).status, 200);
    for (let i = 0; (await hubStore.headSeq(tenantId)) < 6; i++) {
      assert.ok(i < 200, 'the hub sequencing the changes');
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(knows(1, 'bob'), false);
    doors[1].sync = startSync(doors[1].device, 'back');
    await until(() => doors[1].sync.cursor === 6, 10_000, 'the back door catching up');
    assert.deepEqual([knows(1, 'bob'), knows(1, 'alice')], [true, false]);
  });

  it('a door enrols while the hub is down; the change waits in its outbox and reaches the other door when the hub is back', async function () {
    await hub?.close();
    hub = undefined;
    assert.equal((await doors[1].api.run('enroll', thrice(img.personC), { externalUserId: 'carol' })).result.status, 'success');
    assert.equal(doors[1].sync.pending(), 1);
    hub = await startHub(); // it announces its head on start: the door sends what waited
    await until(() => knows(0, 'carol'), 10_000, 'carol at the front door');
    await until(() => doors[1].sync.pending() === 0, 5000, 'the outbox emptied by the ack');
  });

  it('refuses a tampered envelope and one sealed with another tenant’s key; the cursor stays', async function () {
    const before = doors[0].sync.cursor;
    const mqtt = await import('mqtt');
    const c = await mqtt.default.connectAsync(url, { reconnectPeriod: 0 });
    try {
      const forged = (key: Buffer) => ({
        tenant_id: tenantId,
        changes: [
          {
            kind: 'user.upsert',
            external_user_id: 'mallory',
            version: 1,
            model: EMBEDDING_MODEL,
            key_version: 1,
            template: sealTemplate(key, new Float32Array(128).fill(0.088), { tenantId, externalUserId: 'mallory', version: 1, model: EMBEDDING_MODEL, keyVersion: 1 }),
            tenant_id: tenantId,
            seq: before + 1,
            change_id: crypto.randomUUID(),
            origin: 'hub',
            committed_at: new Date().toISOString(),
          },
        ],
      });
      await c.publishAsync(syncTopics(prefix, tenantId).log, JSON.stringify(forged(newTenantKey())), { qos: 1 });
      const tampered = forged(tenantKey);
      const bytes = Buffer.from(tampered.changes[0].template.ciphertext, 'base64');
      bytes[0] ^= 0x80;
      tampered.changes[0].template.ciphertext = bytes.toString('base64');
      await c.publishAsync(syncTopics(prefix, tenantId).log, JSON.stringify(tampered), { qos: 1 });
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      await c.endAsync();
    }
    assert.equal(knows(0, 'mallory'), false);
    assert.equal(doors[0].sync.cursor, before);
  });
});
