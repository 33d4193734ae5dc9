import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { createLogger } from '../src/core/logger.ts';
import { HubStore } from '../src/hub/store.ts';
import { HubSync } from '../src/hub/sync-service.ts';
import type { DeviceSync } from '../src/sync/device-sync.ts';
import { newTenantKey, sealTemplate } from '../src/sync/envelope.ts';
import { writeKeyFile } from '../src/sync/keyring.ts';
import { joinTestDoor } from './support/fleet.ts';
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
  const masterKey = crypto.randomBytes(32);
  /** The hub's key of the tenant (what `authface hub wrap-key` gives each door). */
  let tenantKey: Buffer;
  const prefix = `authface-fleet-${process.pid}`;
  const logger = createLogger('silent');
  let db: TestDatabase;
  let hubStore: HubStore;
  let hub: HubSync | undefined;
  let url: string;
  let img: Photos;
  const doors: { device: TestDevice; api: Client }[] = [];
  const keysDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-fleet-keys-'));

  const knows = (door: number, id: string) => doors[door].device.svc.service.store.users.get(tenantId, id) !== undefined;
  const identify = async (door: number, photo: Buffer) => (await doors[door].api.run('identify', thrice(photo))).result;
  const syncOf = (door: number) => doors[door].device.svc.service.device?.sync as DeviceSync;
  const startHub = () => HubSync.start(hubStore, { url, prefix, logger });

  /** A fleet door as its device file sets it up: joined, with the tenant key wrapped for its own key pair and the hub's key. */
  async function startDoor(name: string): Promise<TestDevice> {
    const keyFile = path.join(keysDir, `${name}.json`);
    return startTestDevice(
      {
        device_id: `${name}-${process.pid}`,
        tenant_id: tenantId,
        liveness: 'passive',
        kiosk: { cooldown_seconds: 0 },
        // the lab's group is defined at the hub, not in this file
        doors: [
          { id: 'main', relay: { driver: 'simulated' } },
          { id: 'lab', allow: { groups: ['staff'] }, relay: { driver: 'simulated' } },
        ],
        mqtt: { url, topic_prefix: prefix },
        remote_commands: { public_key: (await hubStore.keys.commandKey(tenantId)).publicKey },
        sync: { tenant_key_file: keyFile },
      },
      {},
      {
        tenantId,
        prepare: async (dataDir) =>
          writeKeyFile(keyFile, (await joinTestDoor(hubStore, { tenantId, deviceId: `${name}-${process.pid}`, dataDir, brokerUrl: url, prefix })).tenantKeys),
      },
    );
  }

  /** Polls an async condition (the hub's database) until it holds. */
  async function untilAsync(check: () => Promise<boolean>, what: string, ms = 10_000): Promise<void> {
    const end = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Someone at a door's kiosk: the door's own identify session with three frames of `photo`; the access decision it led to. */
  async function atDoor(door: number, photo: Buffer, doorId = 'main'): Promise<{ status: string; externalUserId: string | null; access?: string }> {
    const device = doors[door].device;
    const { token, clientState } = await device.svc.service.device!.kiosk.startIdentify(doorId);
    const capture = new Client(device.svc.url, '').capture(token);
    await capture.session();
    for (let i = 0; i < 3; i++) await capture.frame(photo);
    await capture.complete();
    const session = device.svc.service.store.sessions.byClientState(tenantId, clientState);
    const decision = device.svc.service.store.audit.list(tenantId, 100).find((e) => e.type === 'access_decision' && e.sessionId === session?.id);
    return { status: session?.status ?? 'missing', externalUserId: session?.resultUserId ?? null, ...(decision ? { access: `${decision.result}:${decision.reason ?? ''}` } : {}) };
  }

  before(async function () {
    img = await photos();
    url = (await testBroker()).url;
    db = await createTestDatabase();
    hubStore = await HubStore.open(db.url, { masterKey });
    // the doors take the tenant's settings from the hub's log (their API sessions redirect there)
    await hubStore.createTenant(tenantId, 'acme', { allowedOrigins: ['https://app.example.com', 'http://localhost'], livenessMode: 'passive' });
    tenantKey = (await hubStore.keys.current(tenantId)).key;
    hub = await startHub();
    for (const name of ['front', 'back']) {
      const device = await startDoor(name);
      doors.push({ device, api: new Client(device.svc.url, device.apiKey) });
    }
    await until(() => doors.every((_, i) => syncOf(i).connected), 10_000, 'both doors on the broker');
  });
  after(async function () {
    for (const d of doors) await d.device.close();
    fs.rmSync(keysDir, { recursive: true, force: true });
    await hub?.close();
    // leave no retained head behind on the shared broker
    const mqtt = await import('mqtt');
    const c = await mqtt.default.connectAsync(url, { reconnectPeriod: 0 });
    for (const head of [syncTopics(prefix, tenantId).head, syncTopics(prefix, tenantId).signedHead]) await c.publishAsync(head, '', { retain: true });
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
    // the tenant's settings were the first change, this enrolment the second
    assert.equal(await hubStore.headSeq(tenantId), 2);
    assert.deepEqual([syncOf(0).cursor, syncOf(1).cursor], [2, 2]);
  });

  it('an update at the back door gives the front door the new template', async function () {
    assert.equal((await doors[1].api.run('update_embedding', thrice(img.personA[2]), { externalUserId: 'alice' })).result.status, 'success');
    await until(() => doors[0].device.svc.service.store.users.get(tenantId, 'alice')?.version === 2, 10_000, 'version 2 at the front door');
    assert.equal(syncOf(0).pending() + syncOf(1).pending(), 0, 'every change acknowledged');
  });

  it('a deletion at the front door: gone at the back door and at the hub', async function () {
    assert.equal((await doors[0].api.post('/biometry/v1/delete-user', { external_user_id: 'alice' })).status, 200);
    await until(() => !knows(1, 'alice'), 10_000, 'alice gone at the back door');
    assert.equal(doors[1].device.svc.service.index.of(tenantId).size, 0);
    const central = await hubStore.pool.query('SELECT deleted, template FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2', [tenantId, 'alice']);
    assert.deepEqual(central.rows[0], { deleted: true, template: null });
    assert.equal((await identify(1, img.personA[1])).status, 'fail');
    // the hub shows the erasure complete once both doors report having applied it
    await untilAsync(async () => (await hubStore.devices.erasureStatus(tenantId, 'alice'))?.complete === true, 'the erasure complete at the hub');
    assert.deepEqual(await hubStore.devices.erasureStatus(tenantId, 'alice'), { seq: 4, applied: 2, devices: 2, complete: true });
  });

  it('a door that was offline catches up on reconnect, and applies a deletion it missed before its first decision', async function () {
    assert.equal((await doors[0].api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
    await until(() => knows(1, 'alice'), 10_000, 'alice at the back door');
    await doors[1].device.svc.close(); // the back door goes offline
    assert.equal((await doors[0].api.run('enroll', thrice(img.personB), { externalUserId: 'bob' })).result.status, 'success');
    assert.equal((await doors[0].api.post('/biometry/v1/delete-user', { external_user_id: 'alice' })).status, 200);
    await untilAsync(async () => (await hubStore.headSeq(tenantId)) === 7, 'the hub sequencing the changes');
    await untilAsync(async () => (await hubStore.devices.erasureStatus(tenantId, 'alice'))?.applied === 1, 'the front door reporting the deletion');
    const pending = await hubStore.devices.erasureStatus(tenantId, 'alice');
    assert.deepEqual([pending?.applied, pending?.devices, pending?.complete], [1, 2, false], 'applied on 1 of 2 doors while the back door is offline');
    const back = (await hubStore.devices.list(tenantId)).find((d) => d.deviceId.startsWith('back'));
    assert.deepEqual([back?.state, back?.lag], ['offline', 3], 'the back door is offline (its last will) and 3 changes behind');
    const bootBefore = back?.boot ?? 0;
    // the back door comes back while the hub is slow to answer (here: down for a moment), and
    // alice walks up at once. Her template is still in the door's own copy; her deletion comes
    // only with the catch-up: the door must not decide before it
    await hub?.close();
    await doors[1].device.restart();
    doors[1].api = new Client(doors[1].device.svc.url, doors[1].device.apiKey);
    await until(() => syncOf(1).connected, 10_000, 'the back door on the broker');
    assert.equal(knows(1, 'alice'), true, 'the door came back with its old copy');
    const first = atDoor(1, img.personA[1]);
    await new Promise((r) => setTimeout(r, 500));
    hub = await startHub();
    assert.deepEqual(await first, { status: 'fail', externalUserId: null, access: 'denied:not_identified' }, 'the deletion was applied before the first decision');
    assert.equal(syncOf(1).cursor, 7);
    assert.deepEqual([knows(1, 'bob'), knows(1, 'alice')], [true, false]);
    assert.equal((await atDoor(1, img.personB)).externalUserId, 'bob');
    await untilAsync(async () => (await hubStore.devices.erasureStatus(tenantId, 'alice'))?.complete === true, 'the erasure complete again');
    await untilAsync(async () => (await hubStore.devices.list(tenantId)).every((d) => d.state === 'online' && d.lag === 0), 'both doors online and in step');
    const devices = await hubStore.devices.list(tenantId);
    assert.equal(devices.find((d) => d.deviceId.startsWith('back'))?.boot, bootBefore + 1, 'the boot counter counts the restart');
    assert.ok(devices.every((d) => !d.diverged), 'the doors hold exactly the hub\'s user set');
  });

  it('every door event reaches the central store once; those held while the hub was down are marked delayed', async function () {
    const central = async () =>
      (await hubStore.pool.query<{ event_id: string; door_id: string; result: string; external_user_id: string | null; delayed: boolean }>('SELECT event_id, door_id, result, external_user_id, delayed FROM hub_access_events WHERE tenant_id = $1', [tenantId])).rows;
    // the decisions of the offline test, made online: already there, not delayed
    await untilAsync(async () => (await central()).length >= 2, 'the door events at the hub');
    assert.ok((await central()).every((e) => !e.delayed));
    await hub?.close();
    hub = undefined;
    const offline = await atDoor(1, img.personB);
    assert.equal(offline.externalUserId, 'bob', 'the door works without the hub');
    await new Promise((r) => setTimeout(r, 2500));
    hub = await startHub();
    await untilAsync(async () => (await central()).some((e) => e.delayed), 'the held event at the hub');
    syncOf(1).flushEvents(true); // sending again changes nothing: an event id is kept once
    await new Promise((r) => setTimeout(r, 500));
    const events = await central();
    assert.equal(new Set(events.map((e) => e.event_id)).size, events.length);
    assert.deepEqual(events.filter((e) => e.delayed).map((e) => [e.door_id, e.result, e.external_user_id]), [['main', 'granted', 'bob']]);
    const local = doors[1].device.svc.service.store.audit.list(tenantId, 100).filter((e) => e.doorId !== null);
    assert.deepEqual(events.map((e) => e.event_id).sort(), local.map((e) => e.id).sort(), 'the hub holds exactly the door events of the back door');
  });

  it('a door enrols while the hub is down; the change waits in its outbox and reaches the other door when the hub is back', async function () {
    await hub?.close();
    hub = undefined;
    assert.equal((await doors[1].api.run('enroll', thrice(img.personC), { externalUserId: 'carol' })).result.status, 'success');
    assert.equal(syncOf(1).pending(), 1);
    hub = await startHub(); // it announces its head on start: the door sends what waited
    await until(() => knows(0, 'carol'), 10_000, 'carol at the front door');
    await until(() => syncOf(1).pending() === 0, 5000, 'the outbox emptied by the ack');
  });

  it("the tenant's settings and groups are the hub's: a group's door opens for a person once the hub puts them in it", async function () {
    assert.equal((await atDoor(0, img.personC, 'lab')).access, 'denied:not_in_group');
    // made at the hub by an admin (authface hub group add): the doors learn it from the next head
    await hubStore.changeGroup(tenantId, 'carol', 'staff', true);
    await until(() => doors.every((d) => d.device.svc.service.store.groups.isMember(tenantId, 'staff', 'carol')), 15_000, 'carol in staff at both doors');
    assert.equal((await atDoor(1, img.personC, 'lab')).access, 'granted:');
    assert.equal((await atDoor(0, img.personC, 'main')).access, 'granted:', 'a door without groups opens for everyone enrolled');
    await hubStore.updateTenantSettings(tenantId, { allowed_origins: ['https://other.example.com'] });
    await until(() => doors.every((d) => d.device.svc.service.store.tenants.get(tenantId)?.allowedOrigins[0] === 'https://other.example.com'), 15_000, 'the new origins at both doors');
    const refused = await doors[0].api.post('/biometry/v1/identify', { client_state: crypto.randomUUID(), redirect_url: 'https://app.example.com/callback' });
    assert.equal(refused.status, 400);
    assert.equal((refused.body as { error: { code: string } }).error.code, 'redirect_origin_not_allowed');
    await hubStore.updateTenantSettings(tenantId, { allowed_origins: ['https://app.example.com', 'http://localhost'] });
    // a deletion takes the person's groups with them, everywhere
    assert.equal((await doors[1].api.post('/biometry/v1/delete-user', { external_user_id: 'carol' })).status, 200);
    await until(() => doors.every((d) => d.device.svc.service.store.groups.of(tenantId, 'carol').length === 0 && !d.device.svc.service.store.users.get(tenantId, 'carol')), 10_000, 'carol gone at both doors');
    assert.deepEqual(await hubStore.groupMembers(tenantId), []);
  });

  it('a broker client without the tenant key cannot delete a person, put one in a group, move the origins, or submit a deletion', async function () {
    const head = await hubStore.headSeq(tenantId);
    await until(() => doors.every((_, i) => syncOf(i).cursor === head), 10_000, 'both doors at the head');
    const topics = syncTopics(prefix, tenantId);
    const mqtt = await import('mqtt');
    const c = await mqtt.default.connectAsync(url, { reconnectPeriod: 0 });
    try {
      const forged = (body: Record<string, unknown>, seq: number) => ({ ...body, tenant_id: tenantId, seq, change_id: crypto.randomUUID(), origin: 'hub', committed_at: new Date().toISOString() });
      // the next numbers of the log, as the hub would publish them
      const changes = [
        forged({ kind: 'user.groups', external_user_id: 'bob', groups: ['staff'] }, head + 1),
        forged({ kind: 'user.delete', external_user_id: 'bob', version: 99 }, head + 2),
        forged({ kind: 'tenant.settings', name: 'evil', allowed_origins: ['https://evil.example'], liveness_mode: 'passive' }, head + 3),
      ];
      // on the log the doors read (signed) and the one of earlier releases
      for (const log of [topics.signedLog, topics.log]) await c.publishAsync(log, JSON.stringify({ tenant_id: tenantId, changes }), { qos: 1 });
      // a deletion submitted for sequencing, as if from a door
      await c.publishAsync(topics.submit('intruder'), JSON.stringify({ device_id: 'intruder', change_id: crypto.randomUUID(), body: { kind: 'user.delete', external_user_id: 'bob', version: 99 } }), { qos: 1 });
      await new Promise((r) => setTimeout(r, 1500));
    } finally {
      await c.endAsync();
    }
    for (const [i, door] of doors.entries()) {
      const store = door.device.svc.service.store;
      assert.ok(knows(i, 'bob'), `bob still enrolled at door ${i}`);
      assert.equal(store.groups.isMember(tenantId, 'staff', 'bob'), false, `bob not in staff at door ${i}`);
      assert.notEqual(store.tenants.get(tenantId)?.name, 'evil', `the tenant's settings unchanged at door ${i}`);
      assert.equal(syncOf(i).cursor, head);
    }
    assert.equal(await hubStore.headSeq(tenantId), head, 'nothing sequenced for the intruder');
    assert.equal((await hubStore.pool.query(`SELECT 1 FROM hub_users WHERE tenant_id = $1 AND external_user_id = 'bob' AND NOT deleted`, [tenantId])).rowCount, 1);
    // the log goes on: the hub's next change is applied at both doors
    await hubStore.changeGroup(tenantId, 'bob', 'night', true);
    await until(() => doors.every((d) => d.device.svc.service.store.groups.isMember(tenantId, 'night', 'bob')), 15_000, 'the real change at both doors');
    // people, versions and groups: the doors' digests are the hub's
    for (const door of doors) assert.equal(door.device.svc.service.store.users.digest(tenantId).digest, await hubStore.digest(tenantId));
  });

  it('refuses a tampered envelope and one sealed with another tenant’s key; the cursor stays', async function () {
    const before = syncOf(0).cursor;
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
            model: FLEET_MODEL,
            key_version: 1,
            template: sealTemplate(key, new Float32Array(128).fill(0.088), { tenantId, externalUserId: 'mallory', version: 1, model: FLEET_MODEL, keyVersion: 1 }),
            tenant_id: tenantId,
            seq: before + 1,
            change_id: crypto.randomUUID(),
            origin: 'hub',
            committed_at: new Date().toISOString(),
          },
        ],
      });
      await c.publishAsync(syncTopics(prefix, tenantId).signedLog, JSON.stringify(forged(newTenantKey())), { qos: 1 });
      const tampered = forged(tenantKey);
      const bytes = Buffer.from(tampered.changes[0].template.ciphertext, 'base64');
      bytes[0] ^= 0x80;
      tampered.changes[0].template.ciphertext = bytes.toString('base64');
      await c.publishAsync(syncTopics(prefix, tenantId).signedLog, JSON.stringify(tampered), { qos: 1 });
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      await c.endAsync();
    }
    assert.equal(knows(0, 'mallory'), false);
    assert.equal(syncOf(0).cursor, before);
  });
});
