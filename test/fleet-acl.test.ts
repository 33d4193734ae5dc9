import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { publicKeyFromBase64, signCommand } from '../src/access/signed-command.ts';
import { normalize } from '../src/biometrics/embedding.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { join } from '../src/cli/join.ts';
import { loadSettings } from '../src/config/settings.ts';
import { EventBus } from '../src/core/events.ts';
import { createLogger } from '../src/core/logger.ts';
import { type DeviceConfig, loadDeviceConfig } from '../src/device/config.ts';
import { diagnose } from '../src/device/doctor.ts';
import { type Hub, startHub } from '../src/hub/service.ts';
import { brokerOptions } from '../src/mqtt/bridge.ts';
import { type Store, openStore } from '../src/store/index.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { loadKeyring } from '../src/sync/keyring.ts';
import { sealTemplate } from '../src/sync/envelope.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import { type OwnMosquitto, startDynsecMosquitto } from './support/mosquitto.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';
import { sharedAnalyzer } from './support/service.ts';

/**
 * Each device holds only its own rights on the broker: the hub administers Mosquitto's dynamic
 * security plugin (as Debian ships it), and each device that joins gets a broker client whose
 * role lets it publish its own state and events and read its tenant's log and its own command
 * topic, nothing else.
 */
describe("broker rights: each device's own client through Mosquitto's dynamic security plugin", function () {
  this.timeout(120_000);
  const prefix = 'authface';
  const hubUser = { username: 'hub', password: crypto.randomBytes(12).toString('hex') };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-acl-'));
  const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.cos(i * 1.7 + k)));
  let broker: OwnMosquitto | undefined;
  let db: TestDatabase;
  let hub: Hub;
  let tenantA: string;
  let tenantB: string;
  const devices: Record<string, { config: DeviceConfig; dataDir: string }> = {};
  const clients: MqttClient[] = [];
  let sync: DeviceSync | undefined;
  let store: Store | undefined;

  /** A raw MQTT connection with a joined device's credentials, as its device file gives them. */
  const connectAs = async (name: string) => {
    const { config } = devices[name];
    const c = await mqtt.connectAsync(config.mqtt.url!, { ...brokerOptions(config.mqtt), clientId: `probe-${name}-${crypto.randomBytes(4).toString('hex')}`, protocolVersion: 5, reconnectPeriod: 0 });
    clients.push(c);
    return c;
  };
  const denied = (p: Promise<unknown>) => assert.rejects(p, /Not authorized/);

  before(async function () {
    broker = await startDynsecMosquitto(hubUser);
    db = await createTestDatabase();
    const port = broker.port;
    const brokerUrl = `mqtt://${hubUser.username}:${hubUser.password}@127.0.0.1:${port}`;
    hub = await startHub(loadSettings({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent' }), {
      databaseUrl: db.url,
      brokerUrl,
      brokerAcl: 'mosquitto-dynsec',
      prefix,
      masterKey: crypto.randomBytes(32),
      logger: createLogger('silent'),
      version: 'test',
      analyzer: await sharedAnalyzer(),
    });
    tenantA = (await hub.biometry.tenants.create({ name: 'a', allowedOrigins: [], livenessMode: 'passive' })).id;
    tenantB = (await hub.biometry.tenants.create({ name: 'b', allowedOrigins: [], livenessMode: 'passive' })).id;
    for (const [name, tenant] of [['a1', tenantA], ['a2', tenantA], ['b1', tenantB]] as const) {
      const { code } = await hub.store.devices.add(tenant, name, 600);
      const dataDir = path.join(dir, name);
      const joined = await join(loadSettings({ AUTHFACE_DATA_DIR: dataDir }), { hub: hub.url, code });
      devices[name] = { config: loadDeviceConfig(joined.config_file), dataDir };
    }
  });
  after(async function () {
    for (const c of clients) await c.endAsync(true);
    await sync?.close();
    store?.close();
    await hub?.close();
    await db?.drop();
    await broker?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a joined device has a broker client of its own, and with it replicates both ways', async function () {
    const { config, dataDir } = devices.a1;
    assert.equal(config.mqtt.username, `${tenantA}/a1`, 'broker client names hold the tenant');
    assert.ok(config.mqtt.password_file);
    assert.equal(fs.statSync(config.mqtt.password_file).mode & 0o777, 0o600, 'the password file is private');
    assert.equal(config.mqtt.url, `mqtt://127.0.0.1:${broker!.port}`, "the device is not given the hub's own credentials");
    const brokerCheck = (await diagnose(loadSettings({ AUTHFACE_DATA_DIR: dataDir }), config)).find((c) => c.name === 'broker');
    assert.equal(brokerCheck?.status, 'ok', `doctor: ${brokerCheck?.detail}`);
    const keyring = loadKeyring(config.sync!.tenant_key_file, dataDir, { tenantId: tenantA, deviceId: 'a1' });
    const { key, keyVersion } = keyring.latest;
    store = openStore(dataDir, undefined);
    store.tenants.create({ id: tenantA, name: 'a', allowedOrigins: [], livenessMode: 'passive' });
    const hubKey = publicKeyFromBase64(config.remote_commands.public_key!);
    sync = DeviceSync.start(store, new GalleryIndex(), new EventBus(), { deviceId: 'a1', tenantId: tenantA, url: config.mqtt.url!, prefix, broker: brokerOptions(config.mqtt), keyring, hubKey, model: FLEET_MODEL, logger: createLogger('silent') });
    const template = sealTemplate(key, face(1), { tenantId: tenantA, externalUserId: 'alice', version: 1, model: FLEET_MODEL, keyVersion });
    assert.equal((await hub.sync.submit(tenantA, { kind: 'user.upsert', external_user_id: 'alice', version: 1, model: FLEET_MODEL, key_version: keyVersion, template })).status, 'sequenced');
    for (let i = 0; i < 200 && !store.users.get(tenantA, 'alice'); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(store.users.get(tenantA, 'alice'), "the hub's change at the door (it reads its tenant's log)");
    store.users.enroll(tenantA, 'bob', { [FLEET_MODEL]: face(2) });
    for (let i = 0; i < 200 && sync.pending() > 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(sync.pending(), 0, "the door's change acknowledged (it publishes to its own topics)");
    assert.equal((await hub.store.userState(hub.store.pool, tenantA, 'bob'))?.version, 1);
  });

  it("a device's credentials cannot read another tenant's log, publish another device's events, or send a command", async function () {
    const a1 = await connectAs('a1');
    const a = syncTopics(prefix, tenantA);
    const b = syncTopics(prefix, tenantB);
    // its own: allowed
    await a1.subscribeAsync([a.signedLog, a.signedHead, a.log, a.head, a.reply('a1'), `${prefix}/a1/command`], { qos: 1 });
    await a1.publishAsync(`${prefix}/a1/status`, 'online', { qos: 1 });
    // another tenant's log, and the hub's replies to another device
    await denied(a1.subscribeAsync(b.log, { qos: 1 }));
    await denied(a1.subscribeAsync(b.signedLog, { qos: 1 }));
    await denied(a1.subscribeAsync(b.head, { qos: 1 }));
    await denied(a1.subscribeAsync(a.reply('a2'), { qos: 1 }));
    await denied(a1.subscribeAsync(`${prefix}/#`, { qos: 1 }));
    // another device's events, submissions and state; the log itself
    await denied(a1.publishAsync(a.events('a2'), '{}', { qos: 1 }));
    await denied(a1.publishAsync(a.submit('a2'), '{}', { qos: 1 }));
    await denied(a1.publishAsync(a.state('a2'), '{}', { qos: 1, retain: true }));
    await denied(a1.publishAsync(`${prefix}/a2/door/main/access`, '{}', { qos: 1 }));
    await denied(a1.publishAsync(a.log, '{}', { qos: 1 }));
    await denied(a1.publishAsync(a.signedLog, '{}', { qos: 1 }));
    await denied(a1.publishAsync(a.signedHead, '{}', { qos: 1, retain: true }));
    await denied(a1.publishAsync(b.events('b1'), '{}', { qos: 1 }));
    // a command, to any door (its own included): only the hub's admins send them
    for (const door of ['a1', 'a2', 'b1']) await denied(a1.publishAsync(`${prefix}/${door}/command`, '{}', { qos: 1 }));
    // the hub may: a command it signs reaches the door's command topic
    const received = new Promise<string>((resolve) => a1.on('message', (topic) => topic.endsWith('/a1/command') && resolve(topic)));
    const { privateKey } = await hub.store.keys.commandKey(tenantA);
    assert.equal(await hub.sync.sendCommand(tenantA, 'a1', signCommand(privateKey, { command: 'unlock', device: 'a1', door: 'main', request_id: 'req_acl' }), 300), null, 'nobody answers on this probe');
    assert.equal(await received, `${prefix}/a1/command`);
    // and a device of the other tenant is kept to its own the same way
    const b1 = await connectAs('b1');
    await denied(b1.subscribeAsync(a.log, { qos: 1 }));
    await b1.subscribeAsync(b.log, { qos: 1 });
  });

  it('issue 18, findings 1–4 on dynamic security: a broker client without keys cannot connect; a joined door cannot even publish the forgeries', async function () {
    // a broker client with no credentials (the quick start's anonymous attacker)
    await assert.rejects(mqtt.connectAsync(`mqtt://127.0.0.1:${broker!.port}`, { protocolVersion: 5, reconnectPeriod: 0 }), /Not authorized|Bad User Name or Password/);
    const a1 = await connectAs('a1');
    const a = syncTopics(prefix, tenantA);
    // 1. a range or snapshot reply to another door, or a repair, or a notice
    await denied(a1.publishAsync(a.reply('a2'), '{}', { qos: 1 }));
    await denied(a1.publishAsync(a.reply('a1'), '{}', { qos: 1 }));
    await denied(a1.publishAsync(a.notice('a2'), '{}', { qos: 1, retain: true }));
    // 2. the answer to the hub's command for another door (or for itself: the hub reads it signed)
    await denied(a1.publishAsync(`${prefix}/a2/command/result`, '{}', { qos: 1 }));
    // 3. another door's state (checked above) and its submissions, in its name
    await denied(a1.publishAsync(a.state('a2'), '{}', { qos: 1, retain: true }));
    // 4. fetch and snapshot requests in another door's name
    await denied(a1.publishAsync(a.fetch('a2'), '{}', { qos: 1 }));
    await denied(a1.publishAsync(a.snapshot('a2'), '{}', { qos: 1 }));
    // what it may publish is its own, and that the hub reads signed (test/fleet-forgery.test.ts)
    await a1.publishAsync(a.fetch('a1'), '{}', { qos: 1 });
  });

  it('issue 18, finding 7: a door cannot retain a message larger than the broker allows (dynsec.conf: 128 KiB)', async function () {
    const a = syncTopics(prefix, tenantA);
    const watcher = await mqtt.connectAsync(`mqtt://${hubUser.username}:${hubUser.password}@127.0.0.1:${broker!.port}`, { protocolVersion: 5, reconnectPeriod: 0 });
    clients.push(watcher);
    const heard: number[] = [];
    watcher.on('message', (_topic, payload) => heard.push(payload.length));
    // found: the setup had no limit, and a door retained a 3 MB message on its own state topic
    const a1 = await connectAs('a1');
    const closed = new Promise<void>((resolve) => a1.once('close', () => resolve()));
    a1.publish(a.state('a1'), Buffer.alloc(3 * 1024 * 1024, 'x'), { qos: 1, retain: true });
    const cutOff = await Promise.race([closed.then(() => true), new Promise((r) => setTimeout(r, 5000)).then(() => false)]);
    await watcher.subscribeAsync(a.state('a1'), { qos: 1 });
    await new Promise((r) => setTimeout(r, 500));
    assert.ok(heard.every((n) => n < 128 * 1024), `nothing that large was retained (${heard.join(', ')} bytes)`);
    assert.ok(cutOff, 'the broker closed the connection that sent it');
    // a message of an ordinary size still goes
    const again = await connectAs('a1');
    await again.publishAsync(a.state('a1'), Buffer.alloc(1000, 'y'), { qos: 1 });
  });

  it('the same password does not work for another device, and a wrong one is refused at connect', async function () {
    const { config } = devices.a1;
    const password = fs.readFileSync(config.mqtt.password_file!, 'utf8');
    await assert.rejects(mqtt.connectAsync(config.mqtt.url!, { username: devices.a2.config.mqtt.username, password, protocolVersion: 5, reconnectPeriod: 0 }), /Bad User Name or Password|Not authorized/);
    await assert.rejects(mqtt.connectAsync(config.mqtt.url!, { username: config.mqtt.username, password: 'guess', protocolVersion: 5, reconnectPeriod: 0 }), /Bad User Name or Password|Not authorized/);
  });

  it('finding 5, two tenants, one device name: the second is refused at device add and at the claim, and the first keeps its broker client', async function () {
    const { code } = await hub.store.devices.add(tenantA, 'dup', 600);
    // found: tenant B's add was given a code for a name tenant A's door was about to take
    await assert.rejects(hub.store.devices.add(tenantB, 'dup', 600), /dup is waiting to join another tenant: choose another name/);
    const joinedA = await join(loadSettings({ AUTHFACE_DATA_DIR: path.join(dir, 'dup-a') }), { hub: hub.url, code });
    assert.equal(loadDeviceConfig(joinedA.config_file).mqtt.username, `${tenantA}/dup`);
    await assert.rejects(hub.store.devices.add(tenantB, 'dup', 600), /dup has already joined another tenant: choose another name/);
    // a code of tenant B for the same name, as an earlier release gave it (its add looked only at joined devices)
    const codeB = 'DXPB-DXPB-DXPB-DXPB';
    await hub.store.pool.query("INSERT INTO hub_claims (tenant_id, code_hash, device_id, expires_at) VALUES ($1, sha256(convert_to('DXPBDXPBDXPBDXPB', 'UTF8')), 'dup', now() + interval '10 minutes')", [tenantB]);
    // found: B's claim succeeded, replaced A's broker client (A's door cut off) and gave B's door A's topics
    await assert.rejects(join(loadSettings({ AUTHFACE_DATA_DIR: path.join(dir, 'dup-b') }), { hub: hub.url, code: codeB }), /dup has already joined another tenant: choose another name; ask for a code under another name/);
    assert.equal(fs.existsSync(path.join(dir, 'dup-b', 'device.yaml')), false, "B's door got nothing");
    assert.equal((await hub.store.pool.query("SELECT 1 FROM hub_devices WHERE tenant_id = $1 AND device_id = 'dup'", [tenantB])).rowCount, 0);
    const a = loadDeviceConfig(joinedA.config_file);
    const still = await mqtt.connectAsync(a.mqtt.url!, { ...brokerOptions(a.mqtt), protocolVersion: 5, reconnectPeriod: 0 });
    clients.push(still);
    assert.ok(still.connected, "A's door keeps its broker client");
  });

  it('a join the hub cannot give a broker client to fails plainly, and its code works again', async function () {
    const { code } = await hub.store.devices.add(tenantA, 'a3', 600);
    await sync?.close();
    sync = undefined;
    for (const c of clients.splice(0)) await c.endAsync(true);
    await broker!.close(); // the broker is gone: the hub cannot create the device's client
    broker = undefined;
    await assert.rejects(join(loadSettings({ AUTHFACE_DATA_DIR: path.join(dir, 'a3') }), { hub: hub.url, code }), /could not prepare this device's keys or broker client/);
    const claim = await hub.store.pool.query<{ used_at: Date | null }>(`SELECT used_at FROM hub_claims WHERE device_id = 'a3'`);
    assert.equal(claim.rows[0]?.used_at, null, 'the code is not spent');
    assert.equal(fs.existsSync(path.join(dir, 'a3', 'device.yaml')), false);
  });
});
