import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { EMBEDDING_MODEL } from '../src/biometrics/embedding.ts';
import { loadSettings } from '../src/config/settings.ts';
import { createLogger } from '../src/core/logger.ts';
import { type Hub, startHub } from '../src/hub/service.ts';
import type { DeviceSync } from '../src/sync/device-sync.ts';
import { loadDeviceKey } from '../src/sync/device-key.ts';
import { sealTemplate, wrapTenantKey } from '../src/sync/envelope.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import { Client } from './support/client.ts';
import { type TestDevice, startTestDevice } from './support/device.ts';
import { testBroker, until } from './support/mqtt.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';
import { sharedAnalyzer, startTestService } from './support/service.ts';

/**
 * While the hub is reachable, an enrolment at a door is committed through the hub before the
 * door says success: the hub runs the fleet-wide 1:N duplicate check. Without the hub the door
 * enrols on its own check and queues the change.
 */
describe('fleet enrolment: committed through the hub, checked against the whole fleet', function () {
  this.timeout(120_000);
  const prefix = `authface-enrol-${process.pid}`;
  const masterKey = crypto.randomBytes(32);
  const logger = createLogger('silent');
  const keysDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-enrol-keys-'));
  let db: TestDatabase;
  let hub: Hub | undefined;
  let door: TestDevice;
  let api: Client;
  let img: Photos;
  let brokerUrl: string;
  let tenantId: string;

  const startTheHub = async () =>
    startHub(loadSettings({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent' }), { databaseUrl: db.url, brokerUrl, prefix, masterKey, logger, version: 'test', analyzer: await sharedAnalyzer() });
  const syncOf = () => door.svc.service.device?.sync as DeviceSync;

  before(async function () {
    img = await photos();
    brokerUrl = (await testBroker()).url;
    db = await createTestDatabase();
    hub = await startTheHub();
    tenantId = (await hub.biometry.tenants.create({ name: 'acme', allowedOrigins: ['https://app.example.com'], livenessMode: 'passive' })).id;
    const { key } = await hub.store.tenantKey(tenantId, masterKey);
    const keyFile = path.join(keysDir, 'door.json');
    door = await startTestDevice(
      { device_id: `door-${process.pid}`, tenant_id: tenantId, liveness: 'passive', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { url: brokerUrl, topic_prefix: prefix }, sync: { tenant_key_file: keyFile } },
      {},
      { tenantId, prepare: (dataDir) => fs.writeFileSync(keyFile, JSON.stringify(wrapTenantKey(key, loadDeviceKey(dataDir).publicKey, { tenantId, deviceId: `door-${process.pid}`, keyVersion: 1 }))) },
    );
    api = new Client(door.svc.url, door.apiKey);
    await until(() => syncOf().connected, 10_000, 'the door on the broker');
  });
  after(async function () {
    await door?.close();
    await hub?.close();
    const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    await c.publishAsync(syncTopics(prefix, tenantId).head, '', { retain: true });
    await c.endAsync();
    await db?.drop();
    fs.rmSync(keysDir, { recursive: true, force: true });
  });

  it('an enrolment at the door is in the hub\'s log before the door answers success, at the version the hub gave', async function () {
    const { result } = await api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' });
    assert.equal(result.status, 'success', JSON.stringify(result));
    // no waiting: the session could only succeed after the hub sequenced it
    const row = await hub!.store.pool.query<{ origin: string; kind: string }>(`SELECT origin, kind FROM hub_changes WHERE tenant_id = $1 AND external_user_id = 'alice'`, [tenantId]);
    assert.deepEqual(row.rows, [{ origin: `door-${process.pid}`, kind: 'user.upsert' }]);
    assert.equal(door.svc.service.store.users.get(tenantId, 'alice')?.version, 1);
    await until(() => syncOf().pending() === 0, 5_000, 'nothing left in the outbox');
    assert.equal((await hub!.store.conflicts(tenantId)).length, 0, 'the door did not send it a second time');
  });

  it('a face the hub holds and the door has not seen yet is refused at the door as a duplicate', async function () {
    // bob enrolled centrally and not published: the door cannot know him (its own check passes)
    // until the hub's next periodic head (every 5 s), so the enrolment starts right after one
    const { key } = await hub!.store.tenantKey(tenantId, masterKey);
    const probe = await door.svc.service.analyzer.analyze(Buffer.from(img.personB), { mode: 'capture' }, { lane: 'test', priority: false });
    assert.ok(probe.embedding);
    const template = sealTemplate(key, probe.embedding, { tenantId, externalUserId: 'bob', version: 1, model: EMBEDDING_MODEL, keyVersion: 1 });
    const watcher = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    const freshHead = new Promise<void>((resolve) => watcher.on('message', (_t, _p, packet) => !packet.retain && resolve()));
    await watcher.subscribeAsync(syncTopics(prefix, tenantId).head, { qos: 1 });
    await freshHead;
    await watcher.endAsync();
    assert.equal((await hub!.store.append(tenantId, { kind: 'user.upsert', external_user_id: 'bob', version: 1, model: EMBEDDING_MODEL, key_version: 1, template }, { origin: 'hub' })).status, 'sequenced');
    assert.equal(door.svc.service.store.users.get(tenantId, 'bob'), undefined);
    const { result } = await api.run('enroll', thrice(img.personB), { externalUserId: 'robert' });
    assert.deepEqual([result.status, result.reason], ['fail', 'conflict'], JSON.stringify(result));
    assert.ok((result.score as number) >= 0.9, 'the score of the person it matched');
    assert.match(door.svc.logs(), /the hub refused an enrolment made here/, 'refused by the hub, not by the door');
    assert.equal(door.svc.service.store.users.get(tenantId, 'robert'), undefined);
    const robert = await hub!.store.pool.query(`SELECT 1 FROM hub_changes WHERE tenant_id = $1 AND external_user_id = 'robert'`, [tenantId]);
    assert.equal(robert.rowCount, 0, 'nothing sequenced, nothing recorded');
  });

  it('a door behind the compacted log loads a snapshot: it ends with exactly the hub\'s people, a deletion made meanwhile applied', async function () {
    await door.svc.close();
    // while the door is down: alice is deleted at the hub, and the log is compacted past everything
    assert.ok(await hub!.biometry.eraseUser(tenantId, 'alice', () => ({ tenantId, type: 'user_deleted', flow: null, sessionId: null, externalUserId: 'erased', result: 'success', reason: null, score: null })));
    assert.ok((await hub!.store.compact(new Date(Date.now() + 1000))) > 0);
    assert.equal((await hub!.store.changesAfter(tenantId, 0)).length, 0, 'the log holds nothing before its head now');
    door.svc = await startTestService({ AUTHFACE_DATA_DIR: path.join(door.dir, 'data'), AUTHFACE_DEVICE_CONFIG: path.join(door.dir, 'device.yaml') });
    api = new Client(door.svc.url, door.apiKey);
    const head = await hub!.store.headSeq(tenantId);
    await until(() => syncOf()?.cursor === head, 15_000, 'the door at the head after its snapshot');
    const local = door.svc.service.store.users;
    assert.equal(local.get(tenantId, 'alice'), undefined, 'the deletion reached it through the snapshot');
    assert.ok(local.get(tenantId, 'bob'), 'bob, whom it never saw in the log');
    assert.equal(local.digest(tenantId).digest, await hub!.store.digest(tenantId));
    assert.match(door.svc.logs(), /loading a snapshot/);
  });

  it('a door whose people differ from the hub\'s at the same sequence is repaired with a snapshot', async function () {
    const local = door.svc.service.store;
    const head = await hub!.store.headSeq(tenantId);
    await until(() => syncOf().cursor === head && syncOf().pending() === 0, 10_000, 'the door in step');
    const digestAtHub = await hub!.store.digest(tenantId);
    // damage that no change explains: a person the hub never had, and one of its people gone
    local.users.replicate(tenantId, 'phantom', 1, Float32Array.from({ length: 128 }, (_, i) => (i === 0 ? 1 : 0)));
    const bob = local.users.get(tenantId, 'bob');
    assert.ok(bob);
    local.db.prepare('DELETE FROM templates WHERE user_id = ?').run(bob.id);
    local.db.prepare('DELETE FROM users WHERE id = ?').run(bob.id);
    assert.notEqual(local.users.digest(tenantId).digest, await hub!.store.digest(tenantId));
    syncOf().publishState();
    await until(() => local.users.digest(tenantId).digest === digestAtHub, 15_000, 'the door holding the hub\'s people again');
    assert.equal(local.users.get(tenantId, 'phantom'), undefined);
    assert.ok(local.users.get(tenantId, 'bob'));
    assert.equal(syncOf().cursor, head, 'the log goes on from where it was');
    const row = await hub!.store.pool.query<{ repaired_at: Date | null }>('SELECT repaired_at FROM hub_devices WHERE tenant_id = $1 AND device_id = $2', [tenantId, `door-${process.pid}`]);
    assert.ok(row.rows[0]?.repaired_at, 'the repair is recorded');
  });

  it('without the hub the door enrols on its own check, queues the change, and the hub takes it on its return', async function () {
    await hub!.close();
    hub = undefined;
    const { result } = await api.run('enroll', thrice(img.personC), { externalUserId: 'carol' });
    assert.equal(result.status, 'success', JSON.stringify(result));
    assert.equal(syncOf().pending(), 1, 'queued durably');
    hub = await startTheHub();
    await until(() => syncOf().pending() === 0, 15_000, 'the queued enrolment acknowledged');
    const row = await hub.store.pool.query<{ version: number }>(`SELECT version FROM hub_users WHERE tenant_id = $1 AND external_user_id = 'carol' AND NOT deleted`, [tenantId]);
    assert.equal(row.rows[0]?.version, 1);
  });
});
