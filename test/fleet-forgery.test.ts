import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { signCommand } from '../src/access/signed-command.ts';
import { normalize } from '../src/biometrics/embedding.ts';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { EventBus } from '../src/core/events.ts';
import { createLogger } from '../src/core/logger.ts';
import { HubStore } from '../src/hub/store.ts';
import { HubSync } from '../src/hub/sync-service.ts';
import { type Store, openStore } from '../src/store/index.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { authenticate, sealTemplate } from '../src/sync/envelope.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import type { TenantKeyring } from '../src/sync/keyring.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import { type JoinedTestDoor, joinTestDoor } from './support/fleet.ts';
import { testBroker, until } from './support/mqtt.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';

/**
 * The broker attacks of issue 18, on the README's fleet quick start: a hub and joined doors on an
 * anonymous Mosquitto. "A broker client" holds no key at all; "a joined door" holds its own keys
 * (the tenant key among them) and nothing else. Each test first did what its finding says against
 * the protocol of the time, and now shows it refused.
 */
describe('issue 18: a fleet no broker client can rewrite', function () {
  this.timeout(120_000);
  const prefix = `authface-forgery-${process.pid}`;
  const logger = createLogger('silent');
  const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.cos(i * 2.3 + k)));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-forgery-'));
  let url: string;
  let db: TestDatabase;
  let hubStore: HubStore;
  let hub: HubSync;
  let tenantId: string;
  let topics: ReturnType<typeof syncTopics>;
  const doors = new Map<string, { joined: JoinedTestDoor; store: Store; index: GalleryIndex; sync: DeviceSync }>();
  const clients: MqttClient[] = [];
  let spy: MqttClient;
  const frontReplies: Buffer[] = [];

  const door = (name: string) => doors.get(name)!;
  const knows = (name: string, who: string) => door(name).store.users.get(tenantId, who) !== undefined && door(name).index.of(tenantId).modelOf(who) !== undefined;
  /** A broker client: on the quick start's anonymous broker anyone on the network can be one. */
  const brokerClient = async () => {
    const c = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
    clients.push(c);
    return c;
  };
  const enrolAtHub = async (who: string, i: number) => {
    const { key, keyVersion } = await hubStore.keys.current(tenantId);
    const template = sealTemplate(key, face(i), { tenantId, externalUserId: who, version: 1, model: FLEET_MODEL, keyVersion });
    const result = await hub.submit(tenantId, { kind: 'user.upsert', external_user_id: who, version: 1, model: FLEET_MODEL, key_version: keyVersion, template });
    assert.equal(result.status, 'sequenced');
  };
  const deleteAtHub = async (who: string) => {
    const version = (await hubStore.pool.query<{ version: number }>('SELECT version FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2', [tenantId, who])).rows[0].version;
    assert.equal((await hub.submit(tenantId, { kind: 'user.delete', external_user_id: who, version: version + 1 })).status, 'sequenced');
  };
  const atHead = async (...names: string[]) => {
    const head = await hubStore.headSeq(tenantId);
    await until(() => names.every((n) => door(n).sync.cursor === head), 15_000, `${names.join(', ')} at the head`);
    return head;
  };
  const recorded = async (name: string) =>
    (await hubStore.pool.query<{ applied_seq: string; digest: string | null }>('SELECT applied_seq, digest FROM hub_devices WHERE tenant_id = $1 AND device_id = $2', [tenantId, door(name).joined.deviceId])).rows[0];

  async function startDoor(name: string): Promise<void> {
    const dataDir = path.join(dir, name);
    const joined = await joinTestDoor(hubStore, { tenantId, deviceId: `${name}-${process.pid}`, dataDir, brokerUrl: url, prefix });
    const store = openStore(dataDir, undefined);
    store.tenants.create({ id: tenantId, name: 'acme', allowedOrigins: [], livenessMode: 'passive' });
    const index = new GalleryIndex();
    const sync = DeviceSync.start(store, index, new EventBus(), { ...joined.syncOptions, url, prefix, model: FLEET_MODEL, logger });
    doors.set(name, { joined, store, index, sync });
    await until(() => sync.connected, 10_000, `${name} on the broker`);
  }

  before(async function () {
    url = (await testBroker()).url;
    db = await createTestDatabase();
    hubStore = await HubStore.open(db.url, { masterKey: crypto.randomBytes(32) });
    tenantId = crypto.randomUUID();
    await hubStore.createTenant(tenantId, 'acme');
    topics = syncTopics(prefix, tenantId);
    hub = await HubSync.start(hubStore, { url, prefix, logger });
    await enrolAtHub('alice', 1);
    await enrolAtHub('bob', 2);
    // a broker client records what the hub sends the front door when it loads its first snapshot
    spy = await brokerClient();
    spy.on('message', (_t, payload) => frontReplies.push(Buffer.from(payload)));
    await spy.subscribeAsync(topics.reply(`front-${process.pid}`), { qos: 1 });
    await startDoor('front');
    await startDoor('back');
    await atHead('front', 'back');
  });
  after(async function () {
    for (const c of clients) await c.endAsync(true);
    for (const d of doors.values()) {
      await d.sync.close();
      d.store.close();
    }
    await hub?.close();
    const c = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
    await c.publishAsync(topics.head, '', { retain: true });
    for (const d of doors.values()) await c.publishAsync(topics.state(d.joined.deviceId), '', { retain: true });
    await c.endAsync();
    await hubStore?.close();
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('high — a deleted person comes back: a broker client replays an old snapshot to a door (after a forged range reply), and the door never recognises the deleted person again', async function () {
    const frontTopic = topics.reply(door('front').joined.deviceId);
    assert.ok(knows('front', 'alice') && knows('front', 'bob'));
    const chunks = frontReplies.filter((p) => JSON.parse(p.toString()).type === 'snapshot');
    assert.ok(chunks.length > 0, 'the broker client saw the snapshot the door loaded');
    await deleteAtHub('alice');
    await until(() => !knows('front', 'alice'), 10_000, 'alice deleted at the front door');
    const head = await hubStore.headSeq(tenantId);

    // for three seconds: "load a snapshot" (a range reply) and the old chunks, again and again,
    // while the door is sampled every few milliseconds
    let recognised = 0;
    let samples = 0;
    const sampler = setInterval(() => {
      samples++;
      if (knows('front', 'alice')) recognised++;
    }, 5);
    const end = Date.now() + 3000;
    try {
      while (Date.now() < end) {
        await spy.publishAsync(frontTopic, JSON.stringify({ type: 'range', tenant_id: tenantId, head, changes: [], snapshot: true }), { qos: 1 });
        await new Promise((r) => setTimeout(r, 20));
        for (const c of chunks) await spy.publishAsync(frontTopic, c, { qos: 1 });
        await new Promise((r) => setTimeout(r, 60));
      }
    } finally {
      clearInterval(sampler);
    }
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(samples > 100, `sampled ${samples} times`);
    assert.equal(recognised, 0, `alice was recognisable at the door in ${recognised} of ${samples} samples`);
    assert.equal(knows('front', 'alice'), false);
    assert.ok(knows('front', 'bob'), 'bob still at the door');
    assert.equal(door('front').sync.cursor, head, 'the cursor never moved back');
    assert.equal(door('front').sync.replica.snapshot(tenantId), undefined, 'no snapshot begun on a forged reply');
  });

  it('medium — an unlock that never happened is reported done: a broker client answers the hub\'s command for a door that is not running', async function () {
    const { privateKey } = await hubStore.keys.commandKey(tenantId);
    const ghost = await joinTestDoor(hubStore, { tenantId, deviceId: `ghost-${process.pid}`, dataDir: path.join(dir, 'ghost'), brokerUrl: url, prefix });
    const answerer = await brokerClient();
    await answerer.subscribeAsync(`${prefix}/${ghost.deviceId}/command`, { qos: 1 });
    answerer.on('message', (_t, payload) => {
      const command = JSON.parse(payload.toString()) as { request_id: string; command: string; door: string };
      void answerer.publishAsync(`${prefix}/${ghost.deviceId}/command/result`, JSON.stringify({ request_id: command.request_id, command: command.command, door: command.door, ok: true }), { qos: 1 });
    });
    const command = signCommand(privateKey, { command: 'unlock', device: ghost.deviceId, door: 'main', request_id: crypto.randomUUID() });
    const reply = await hub.sendCommand(tenantId, ghost.deviceId, command, 1500);
    assert.equal(reply, null, `the hub took a broker client's answer for the door's: ${JSON.stringify(reply)}`);
  });

  it('medium — one door speaks for another: a joined door forges another door\'s state, and empties another door', async function () {
    const head = await atHead('front', 'back');
    const before = await recorded('back');
    // the front door's keys: its tenant key is all it needs to make the MACs
    const frontKeys: TenantKeyring = door('front').joined.syncOptions.keyring;
    const forger = await brokerClient();
    const backId = door('back').joined.deviceId;
    // 1. "the back door is at the head with the hub's people" while it is not (it would hide an erasure it never applied)
    const forgedState = authenticate(frontKeys.latest, 'state', tenantId, { device_id: backId, tenant_id: tenantId, state: 'online' as const, applied_seq: head + 5, digest: '0'.repeat(64), users: 0, boot: 999 });
    await forger.publishAsync(topics.state(backId), JSON.stringify(forgedState), { qos: 1, retain: true });
    let forgedRecorded = false;
    const end = Date.now() + 1000;
    while (Date.now() < end && !forgedRecorded) {
      forgedRecorded = Number((await recorded('back')).applied_seq) === head + 5;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(forgedRecorded, false, 'the hub recorded the forged state');
    assert.ok(Number((await recorded('back')).applied_seq) >= Number(before.applied_seq));
    // 2. "load a snapshot" and an empty one right after it, MAC'd with the tenant key as the hub's were
    const empty = authenticate(frontKeys.latest, 'reply', tenantId, { type: 'snapshot' as const, tenant_id: tenantId, seq: head, after: null, users: [], next: null, more: false });
    let missing = 0;
    let samples = 0;
    const sampler = setInterval(() => {
      samples++;
      if (!knows('back', 'bob')) missing++;
    }, 5);
    try {
      await forger.publishAsync(topics.reply(backId), JSON.stringify({ type: 'range', tenant_id: tenantId, head, changes: [], snapshot: true }), { qos: 1 });
      await forger.publishAsync(topics.reply(backId), JSON.stringify(empty), { qos: 1 });
      await new Promise((r) => setTimeout(r, 1500));
    } finally {
      clearInterval(sampler);
    }
    assert.equal(missing, 0, `the back door, emptied by another door, did not know bob in ${missing} of ${samples} samples`);
    // the real door's own retained state is what stays
    door('back').sync.publishState();
    await until(async () => Number((await recorded('back')).applied_seq) === head, 5000, "the back door's own state");
  });

  it('medium — unauthenticated fetch and snapshot requests: a forged fetch makes a door reload its snapshot; a made-up device is served one; a small request buys a large answer', async function () {
    const head = await atHead('front');
    const attacker = await brokerClient();
    const seen: { topic: string; payload: string }[] = [];
    attacker.on('message', (topic, payload) => seen.push({ topic, payload: payload.toString() }));
    const made = `made-up-${process.pid}`;
    const frontId = door('front').joined.deviceId;
    await attacker.subscribeAsync([topics.reply(made), topics.reply(frontId)], { qos: 1 });
    let reloads = 0;
    const watch = setInterval(() => {
      if (door('front').sync.replica.snapshot(tenantId)) reloads++;
    }, 5);
    try {
      // a fetch from the start, in the real door's name: the hub would tell it to reload everything
      await attacker.publishAsync(topics.fetch(frontId), JSON.stringify({ device_id: frontId, after: 0, limit: 50 }), { qos: 1 });
      // a snapshot for a device that does not exist
      await attacker.publishAsync(topics.snapshot(made), JSON.stringify({ device_id: made, after: null, limit: 64, chunks: 16 }), { qos: 1 });
      // a snapshot in the real door's name (its reply topic is readable on an anonymous broker)
      await attacker.publishAsync(topics.snapshot(frontId), JSON.stringify({ device_id: frontId, after: 'probe', limit: 64, chunks: 16 }), { qos: 1 });
      await new Promise((r) => setTimeout(r, 1500));
    } finally {
      clearInterval(watch);
    }
    assert.equal(reloads, 0, 'the door began reloading its snapshot on a forged fetch');
    assert.deepEqual(seen.filter((m) => m.topic === topics.reply(made)).length, 0, 'a made-up device was answered');
    const answered = seen.filter((m) => m.topic === topics.reply(frontId)).map((m) => JSON.parse(m.payload) as { type: string; after?: string | null; snapshot?: boolean });
    assert.equal(answered.filter((r) => r.type === 'snapshot' && r.after === 'probe').length, 0, 'the forged snapshot request was answered');
    assert.equal(answered.filter((r) => r.type === 'range' && r.snapshot).length, 0, 'the forged fetch was answered');
    assert.equal(door('front').sync.cursor, head);
  });

  it("a broker client replays a door's own signed requests and an old state: refused, at no cost to the door", async function () {
    const frontId = door('front').joined.deviceId;
    await atHead('front');
    const attacker = await brokerClient();
    const heard: { topic: string; payload: Buffer }[] = [];
    attacker.on('message', (topic, payload) => heard.push({ topic, payload: Buffer.from(payload) }));
    await attacker.subscribeAsync([topics.fetch(frontId), topics.state(frontId), topics.reply(frontId)], { qos: 1 });
    await until(() => heard.some((m) => m.topic === topics.state(frontId)), 5000, "the door's retained state");
    const oldState = heard.find((m) => m.topic === topics.state(frontId))!.payload;
    door('front').sync.fetch(true);
    await until(() => heard.some((m) => m.topic === topics.fetch(frontId)), 5000, "the door's fetch");
    const fetch = heard.find((m) => m.topic === topics.fetch(frontId))!.payload;
    const requestId = (JSON.parse(fetch.toString()) as { request_id: string }).request_id;
    const answers = () => heard.filter((m) => m.topic === topics.reply(frontId) && (JSON.parse(m.payload.toString()) as { request_id?: string }).request_id === requestId).length;
    await until(() => answers() === 1, 5000, 'the fetch answered');
    // the door moves on, then the broker client plays its old state and its fetch, far past its rate
    await enrolAtHub('replayed', 40);
    const head = await atHead('front');
    door('front').sync.publishState();
    await until(async () => Number((await recorded('front')).applied_seq) === head, 5000, "the door's new state");
    await attacker.publishAsync(topics.state(frontId), oldState, { qos: 1 });
    for (let i = 0; i < 120; i++) void attacker.publishAsync(topics.fetch(frontId), fetch, { qos: 1 });
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(answers(), 1, 'the hub answered a replayed fetch');
    assert.equal(Number((await recorded('front')).applied_seq), head, 'the hub took the old state back');
    // the door's own next request is answered at once: the replays cost it none of its rate
    const before = heard.length;
    const asked = Date.now();
    door('front').sync.fetch(true);
    await until(() => heard.slice(before).some((m) => m.topic === topics.reply(frontId)), 5000, "an answer to the door's own fetch");
    assert.ok(Date.now() - asked < 1000, `the door's fetch waited ${Date.now() - asked} ms behind the replays`);
  });

  it('a door that never hears the hub again decides on what it applied last, never on anything forged', async function () {
    const head = await atHead('front');
    const frontId = door('front').joined.deviceId;
    assert.ok(knows('front', 'bob'));
    await hub.close(); // the hub is gone for good; what speaks now is a joined door's stolen keys
    const keys: TenantKeyring = door('back').joined.syncOptions.keyring;
    const forger = await brokerClient();
    const asHub = <T extends object>(m: T) => ({ ...m, from: 'hub', sig: crypto.randomBytes(64).toString('base64url') });
    const change = (seq: number, body: object) =>
      authenticate(keys.latest, 'change', tenantId, { ...body, tenant_id: tenantId, seq, change_id: crypto.randomUUID(), origin: 'hub', committed_at: new Date().toISOString() }, ['committed_at']);
    const mallory = sealTemplate(keys.latest.key, face(9), { tenantId, externalUserId: 'mallory', version: 1, model: FLEET_MODEL, keyVersion: keys.latest.keyVersion });
    const forged = {
      tenant_id: tenantId,
      changes: [
        change(head + 1, { kind: 'user.delete', external_user_id: 'bob', version: 99 }),
        change(head + 2, { kind: 'user.upsert', external_user_id: 'mallory', version: 1, model: FLEET_MODEL, key_version: keys.latest.keyVersion, template: mallory }),
      ],
    };
    let wrong = 0;
    let samples = 0;
    const sampler = setInterval(() => {
      samples++;
      if (!knows('front', 'bob') || knows('front', 'mallory')) wrong++;
    }, 5);
    try {
      for (let i = 0; i < 10; i++) {
        await forger.publishAsync(topics.signedLog, JSON.stringify(asHub(forged)), { qos: 1 });
        await forger.publishAsync(topics.log, JSON.stringify(forged), { qos: 1 });
        await forger.publishAsync(topics.signedHead, JSON.stringify(asHub({ tenant_id: tenantId, seq: head + 2 })), { qos: 1, retain: true });
        await forger.publishAsync(topics.reply(frontId), JSON.stringify(asHub({ type: 'range', tenant_id: tenantId, head: head + 2, changes: forged.changes, device_id: frontId, more: false })), { qos: 1 });
        await forger.publishAsync(topics.reply(frontId), JSON.stringify(asHub({ type: 'repair', tenant_id: tenantId, device_id: frontId, digest: door('front').store.users.digest(tenantId).digest, head: head + 2 })), { qos: 1 });
        await new Promise((r) => setTimeout(r, 150));
      }
      await new Promise((r) => setTimeout(r, 500));
    } finally {
      clearInterval(sampler);
    }
    assert.ok(samples > 100, `sampled ${samples} times`);
    assert.equal(wrong, 0, `the door held a forged change in ${wrong} of ${samples} samples`);
    assert.equal(door('front').sync.cursor, head, 'the cursor stayed at what the hub last sent');
    assert.equal(door('front').sync.replica.snapshot(tenantId), undefined, 'no snapshot begun on a forged repair');
    // and it still decides on what it holds: bob is in its identify index
    assert.ok(door('front').index.of(tenantId).modelOf('bob'));
  });
});
