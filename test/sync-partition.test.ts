import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { normalize } from '../src/biometrics/embedding.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { EventBus } from '../src/core/events.ts';
import { createLogger } from '../src/core/logger.ts';
import { HubStore } from '../src/hub/store.ts';
import { HubSync } from '../src/hub/sync-service.ts';
import { type Store, openStore } from '../src/store/index.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import { startChaosProxy } from './support/chaos-proxy.ts';
import { testBroker } from './support/mqtt.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';
import { signMessage } from '../src/sync/signature.ts';
import { type JoinedTestDoor, joinTestDoor } from './support/fleet.ts';

/**
 * Replication under a partition, and a broker that duplicates and reorders: two door replicas
 * (stores and sync clients, no engine) and a hub, on this machine's PostgreSQL and Mosquitto.
 */
describe('sync: a partition of more than 1,000 changes, duplicates and reordering', function () {
  this.timeout(180_000);
  const logger = createLogger('silent');
  const prefix = `authface-partition-${process.pid}`;
  const masterKey = crypto.randomBytes(32);
  const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.sin(i * 7.77 + k)));
  let url: string;
  let db: TestDatabase;
  let hubStore: HubStore;
  let hub: HubSync;
  let tenantId = '';
  const dirs: string[] = [];
  const doors: { store: Store; sync: DeviceSync; index: GalleryIndex }[] = [];

  const poll = async (check: () => boolean | Promise<boolean>, what: string, ms = 60_000) => {
    const end = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  /** Each door joins once (its keys stay in its data directory), and connects again after a cut with the same. */
  const joined = new Map<string, JoinedTestDoor>();
  const connect = async (door: { store: Store; index: GalleryIndex }, name: string, brokerUrl = url) => {
    if (!joined.has(name)) joined.set(name, await joinTestDoor(hubStore, { tenantId, deviceId: name, dataDir: door.store.dataDir, brokerUrl, prefix }));
    return DeviceSync.start(door.store, door.index, new EventBus(), { ...joined.get(name)!.syncOptions, url: brokerUrl, prefix, model: FLEET_MODEL, logger });
  };

  before(async function () {
    url = (await testBroker()).url;
    db = await createTestDatabase();
    hubStore = await HubStore.open(db.url, { masterKey });
    for (let i = 0; i < 2; i++) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-partition-'));
      dirs.push(dir);
      const store = openStore(dir, undefined);
      tenantId = store.tenants.create({ id: tenantId || undefined, name: 'acme', allowedOrigins: [], livenessMode: 'passive' }).id;
      const index = new GalleryIndex();
      doors.push({ store, index, sync: undefined as unknown as DeviceSync });
    }
    await hubStore.createTenant(tenantId, 'acme');
    hub = await HubSync.start(hubStore, { url, prefix, logger });
    for (const [i, d] of doors.entries()) d.sync = await connect(d, ['a', 'b'][i]);
    await poll(() => doors.every((d) => d.sync.connected), 'both doors on the broker');
  });
  after(async function () {
    for (const d of doors) {
      await d.sync.close();
      d.store.close();
    }
    await hub?.close();
    const c = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
    for (const head of [syncTopics(prefix, tenantId).head, syncTopics(prefix, tenantId).signedHead]) await c.publishAsync(head, '', { retain: true });
    for (const name of ['a', 'b']) await c.publishAsync(syncTopics(prefix, tenantId).state(name), '', { retain: true });
    await c.endAsync();
    await hubStore?.close();
    await db?.drop();
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('door b cut off while door a makes 1,200 changes (deletions among them): b converges on reconnect, deletions applied', async function () {
    const [a, b] = doors;
    a.store.users.enroll(tenantId, 'kept-before', { [FLEET_MODEL]: face(0) });
    a.store.users.enroll(tenantId, 'deleted-during', { [FLEET_MODEL]: face(1) });
    await poll(() => b.store.users.get(tenantId, 'deleted-during') !== undefined, 'b in step before the cut');
    await b.sync.close(); // the partition
    for (let i = 0; i < 1000; i++) a.store.users.enroll(tenantId, `p${i}`, { [FLEET_MODEL]: face(i + 10) });
    // (deleted before they were sent, their enrolments would never be sent: the deletion carries them)
    await poll(() => a.sync.pending() === 0, 'the enrolments acknowledged');
    for (let i = 0; i < 199; i++) a.store.eraseUser(tenantId, `p${i * 5}`, () => null);
    a.store.eraseUser(tenantId, 'deleted-during', () => null);
    await poll(async () => (await hubStore.headSeq(tenantId)) === 1203 && a.sync.pending() === 0, 'the hub sequencing 1,200 changes (after the tenant\'s settings and the two before the cut)');
    assert.equal(b.store.users.get(tenantId, 'p1'), undefined, 'b saw nothing while cut off');
    assert.ok(b.store.users.get(tenantId, 'deleted-during'), 'b still holds the person deleted meanwhile');
    b.sync = await connect(b, 'b');
    await poll(() => b.sync.cursor === 1203, 'b catching up');
    assert.equal(b.store.users.get(tenantId, 'deleted-during'), undefined);
    assert.equal(b.store.users.get(tenantId, 'p5'), undefined);
    assert.ok(b.store.users.get(tenantId, 'p6'));
    assert.equal(b.store.users.digest(tenantId).digest, await hubStore.digest(tenantId), 'b holds exactly the hub’s people');
    assert.equal(b.store.users.digest(tenantId).users, 1 + 1000 - 199);
    assert.equal(b.index.of(tenantId).size, 802);
  });

  it('every log message delivered again, in reverse order and twice: nothing changes twice', async function () {
    const b = doors[1];
    const before = { cursor: b.sync.cursor, digest: b.store.users.digest(tenantId).digest, versions: b.store.db.prepare('SELECT SUM(version) AS v FROM users').get() };
    const changes = await hubStore.changesAfter(tenantId, 0, 5000);
    assert.equal(changes.length, 1203);
    const c = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
    try {
      // the hub's own batches (signed by it), as a broker that delivers them again would
      const { privateKey } = await hubStore.keys.commandKey(tenantId);
      const batches: string[] = [];
      for (let i = 0; i < changes.length; i += 50) batches.push(JSON.stringify(signMessage(privateKey, 'log', tenantId, { tenant_id: tenantId, changes: changes.slice(i, i + 50), from: 'hub' })));
      for (const batch of [...batches.reverse(), ...batches]) await c.publishAsync(syncTopics(prefix, tenantId).signedLog, batch, { qos: 1 });
      await new Promise((r) => setTimeout(r, 1500));
    } finally {
      await c.endAsync();
    }
    assert.deepEqual({ cursor: b.sync.cursor, digest: b.store.users.digest(tenantId).digest, versions: b.store.db.prepare('SELECT SUM(version) AS v FROM users').get() }, before);
    assert.equal((b.store.db.prepare('SELECT COUNT(*) AS n FROM templates').get() as { n: number }).n, 802, 'one template per person, none added twice');
  });

  it('through a proxy that duplicates and reorders every PUBLISH both ways: each change is sequenced once and applied once', async function () {
    const [a, b] = doors;
    const proxy = await startChaosProxy(Number(new URL(url).port));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-partition-'));
    dirs.push(dir);
    const c = { store: openStore(dir, undefined), index: new GalleryIndex(), sync: undefined as unknown as DeviceSync };
    c.store.tenants.create({ id: tenantId, name: 'acme', allowedOrigins: [], livenessMode: 'passive' });
    c.sync = await connect(c, 'c', proxy.url);
    try {
      const head0 = await hubStore.headSeq(tenantId);
      await poll(() => c.sync.cursor === head0, 'the new door c loading its snapshot through the proxy');
      // changes made at c (its submissions duplicated on the way to the hub) and at a (the log duplicated on the way to c)
      for (let i = 0; i < 100; i++) c.store.users.enroll(tenantId, `c${i}`, { [FLEET_MODEL]: face(5000 + i) });
      for (let i = 0; i < 50; i++) a.store.users.replaceTemplate(a.store.users.get(tenantId, `p${i * 5 + 1}`)!, { [FLEET_MODEL]: face(9000 + i) });
      for (let i = 0; i < 30; i++) a.store.eraseUser(tenantId, `p${i * 5 + 2}`, () => null);
      await poll(async () => (await hubStore.headSeq(tenantId)) >= head0 + 180 && a.sync.pending() === 0 && c.sync.pending() === 0, 'the 180 changes sequenced');
      const head = await hubStore.headSeq(tenantId);
      await poll(() => [a, b, c].every((d) => d.sync.cursor === head), 'every door at the head');
      const sequenced = (await hubStore.pool.query<{ change_id: string }>('SELECT change_id FROM hub_changes WHERE tenant_id = $1 AND seq > $2', [tenantId, head0])).rows;
      assert.equal(sequenced.length, 180, 'each of the 180 changes sequenced once, however often it was submitted');
      assert.equal(new Set(sequenced.map((r) => r.change_id)).size, 180);
      const digest = await hubStore.digest(tenantId);
      for (const d of [a, b, c]) assert.equal(d.store.users.digest(tenantId).digest, digest);
      const twice = c.store.db.prepare('SELECT COUNT(*) AS n FROM (SELECT user_id, version FROM templates GROUP BY user_id, version HAVING COUNT(*) > 1)').get() as { n: number };
      assert.equal(twice.n, 0, 'no template version applied twice at c');
      const active = c.store.db.prepare('SELECT COUNT(*) AS n FROM templates WHERE active = 1').get() as { n: number };
      assert.equal(active.n, c.store.users.digest(tenantId).users, 'one active template per person');
      assert.equal(c.index.of(tenantId).size, c.store.users.digest(tenantId).users);
      assert.ok(proxy.stats.duplicated > 200 && proxy.stats.reordered > 20, `the proxy misbehaved (${JSON.stringify(proxy.stats)})`);
    } finally {
      await c.sync.close();
      c.store.close();
      await proxy.close();
      const cleaner = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
      await cleaner.publishAsync(syncTopics(prefix, tenantId).state('c'), '', { retain: true });
      await cleaner.endAsync();
    }
  });
});
