import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { loadSettings } from '../src/config/settings.ts';
import { createLogger } from '../src/core/logger.ts';
import { type Hub, startHub } from '../src/hub/service.ts';
import type { DeviceSync } from '../src/sync/device-sync.ts';
import { isAuthentic } from '../src/sync/envelope.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { TenantKeyring, writeKeyFile } from '../src/sync/keyring.ts';
import { CHANGE_FIELDS_OUTSIDE_AUTH, type Change, syncTopics } from '../src/sync/protocol.ts';
import { CLI, run } from './support/cli.ts';
import { Client } from './support/client.ts';
import { type TestDevice, startTestDevice } from './support/device.ts';
import { joinTestDoor } from './support/fleet.ts';
import { testBroker, until } from './support/mqtt.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';
import { sharedAnalyzer } from './support/service.ts';
import { ROOT } from './support/datasets.ts';

/**
 * Issue 20, face+pin doors in a fleet: a PIN is a change of the tenant's log, set at the hub (CLI,
 * API; the console's form is in test/e2e/console.test.ts) or at a door through the hub, and every
 * door applies it. Its tag is keyed from the tenant key, so every door finds it; it never travels
 * or rests in the clear; a deletion takes it everywhere. A real hub (PostgreSQL, Mosquitto) and
 * real doors with the real engine.
 */
describe('issue 20: face+pin doors in a fleet (PINs replicated through the hub)', function () {
  this.timeout(180_000);
  const prefix = `authface-pins-${process.pid}`;
  const masterKey = crypto.randomBytes(32);
  const keysDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-pins-keys-'));
  const ALICE_PIN = '582914';
  const BOB_PIN = '730186';
  let db: TestDatabase;
  let hub: Hub;
  let hubApi: Client;
  let img: Photos;
  let brokerUrl: string;
  let tenantId: string;
  let sniffer: mqtt.MqttClient;
  const onTheBroker: string[] = [];
  const doors: Record<string, TestDevice> = {};

  const syncOf = (door: string) => doors[door].svc.service.device?.sync as DeviceSync;
  const pins = (door: string) => doors[door].svc.service.store.pins;
  const api = (door: string) => new Client(doors[door].svc.url, doors[door].apiKey);

  async function startDoor(name: string): Promise<TestDevice> {
    const keyFile = path.join(keysDir, `${name}.json`);
    const deviceId = `${name}-${process.pid}`;
    const hubStore = hub.store;
    return startTestDevice(
      {
        device_id: deviceId,
        tenant_id: tenantId,
        liveness: 'passive',
        kiosk: { cooldown_seconds: 0 },
        doors: [{ id: 'vault', factor: 'face+pin', relay: { driver: 'simulated' } }],
        mqtt: { url: brokerUrl, topic_prefix: prefix },
        remote_commands: { public_key: (await hubStore.keys.commandKey(tenantId)).publicKey },
        sync: { tenant_key_file: keyFile },
      },
      {},
      { tenantId, prepare: async (dataDir) => writeKeyFile(keyFile, (await joinTestDoor(hubStore, { tenantId, deviceId, dataDir, brokerUrl, prefix })).tenantKeys) },
    );
  }

  /** Someone at a door's face+pin door: the PIN typed, three frames of `photo`; the access decision. */
  async function atVault(door: string, photo: Buffer, pin: string): Promise<string> {
    const device = doors[door];
    const { token, clientState } = await device.svc.service.device!.kiosk.startIdentify('vault', pin);
    const capture = new Client(device.svc.url, '').capture(token);
    await capture.session();
    for (let i = 0; i < 3; i++) await capture.frame(photo);
    await capture.complete();
    const session = device.svc.service.store.sessions.byClientState(tenantId, clientState);
    const decision = device.svc.service.store.audit.list(tenantId, 200).find((e) => e.type === 'access_decision' && e.sessionId === session?.id);
    return `${decision?.result}:${decision?.reason ?? session?.resultUserId ?? ''}`;
  }

  /** `authface hub pin …`, the PIN on standard input. */
  async function hubPinCli(args: string[], pin?: string): Promise<{ stdout: string; stderr: string }> {
    const child = run(process.execPath, [...CLI, 'hub', 'pin', ...args, '--tenant', tenantId, '--database-url', db.url], {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'warn', AUTHFACE_HUB_MASTER_KEY: masterKey.toString('hex') },
    });
    child.child.stdin?.end(pin === undefined ? '' : `${pin}\n`);
    return child;
  }

  /** Everything the hub's database holds of PINs, as text. */
  const hubRows = async () =>
    (await hub.store.pool.query<{ t: string }>(`SELECT (SELECT COALESCE(json_agg(u), '[]') FROM hub_users u)::text || (SELECT COALESCE(json_agg(c), '[]') FROM hub_changes c)::text AS t`)).rows[0].t;

  before(async function () {
    img = await photos();
    brokerUrl = (await testBroker()).url;
    db = await createTestDatabase();
    hub = await startHub(loadSettings({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent' }), {
      databaseUrl: db.url,
      brokerUrl,
      prefix,
      masterKey,
      logger: createLogger('silent'),
      version: 'test',
      analyzer: await sharedAnalyzer(),
    });
    tenantId = (await hub.biometry.tenants.create({ name: 'acme', allowedOrigins: ['https://app.example.com'], livenessMode: 'passive' })).id;
    hubApi = new Client(hub.url, (await hub.biometry.tenants.createKey(tenantId)).apiKey);
    sniffer = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    sniffer.on('message', (_topic, payload) => onTheBroker.push(payload.toString('utf8')));
    await sniffer.subscribeAsync(`${prefix}/#`, { qos: 1 });
    for (const name of ['front', 'back']) doors[name] = await startDoor(name);
    await until(() => ['front', 'back'].every((d) => syncOf(d).connected), 10_000, 'both doors on the broker');
    assert.equal((await api('front').run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
    assert.equal((await api('front').run('enroll', thrice(img.personB), { externalUserId: 'bob' })).result.status, 'success');
    await until(() => ['alice', 'bob'].every((id) => doors.back.svc.service.store.users.get(tenantId, id) !== undefined), 15_000, 'both people at the back door');
  });
  after(async function () {
    for (const d of Object.values(doors)) await d.close();
    await hub?.close();
    await sniffer?.endAsync();
    const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    for (const head of [syncTopics(prefix, tenantId).head, syncTopics(prefix, tenantId).signedHead]) await c.publishAsync(head, '', { retain: true });
    await c.endAsync();
    await db?.drop();
    fs.rmSync(keysDir, { recursive: true, force: true });
  });

  it('a PIN set at the hub (authface hub pin set) opens a fleet face+pin door, at every door; the wrong PIN does not', async function () {
    const set = JSON.parse((await hubPinCli(['set', '--user', 'alice'], ALICE_PIN)).stdout) as { external_user_id: string; pin: string; seq: number };
    assert.deepEqual([set.external_user_id, set.pin], ['alice', 'set']);
    // the CLI writes the log; the serving hub's next head (every 5 s) tells the doors
    await until(() => ['front', 'back'].every((d) => pins(d).has(tenantId, 'alice')), 20_000, 'alice has a PIN at both doors');
    assert.equal(await atVault('back', img.personA[1], ALICE_PIN), 'granted:alice');
    assert.equal(await atVault('front', img.personA[2], ALICE_PIN), 'granted:alice');
    assert.equal(await atVault('back', img.personA[1], '905172'), 'denied:not_identified', 'a wrong PIN');
    assert.equal(await atVault('back', img.personB, ALICE_PIN), 'denied:not_identified', "bob's face with alice's PIN");
    // the change is the hub's, audited with who made it
    const audit = await hub.store.pool.query<{ type: string; reason: string }>("SELECT type, reason FROM hub_audit_events WHERE tenant_id = $1 AND external_user_id = 'alice' AND type LIKE 'pin_%'", [tenantId]);
    assert.deepEqual(audit.rows.map((r) => r.type), ['pin_set']);
    assert.match(audit.rows[0].reason, /^by cli /);
    // refusals: a weak PIN, a person not enrolled, removing a PIN nobody set
    await assert.rejects(hubPinCli(['set', '--user', 'alice'], '1234'), (err: { stderr: string }) => /choose a PIN that is not one digit repeated/.test(err.stderr));
    await assert.rejects(hubPinCli(['set', '--user', 'nobody'], '648203'), (err: { stderr: string }) => /nobody is not enrolled/.test(err.stderr));
    await assert.rejects(hubPinCli(['remove', '--user', 'bob']), (err: { stderr: string }) => /bob has no PIN/.test(err.stderr));
  });

  it('a PIN set at a door goes through the hub: that door has it when it answers, the others from the log; the hub\'s API sets and removes PINs too', async function () {
    const res = await api('back').post('/device/v1/set-pin', { external_user_id: 'bob', pin: BOB_PIN });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.ok(pins('back').has(tenantId, 'bob'), 'applied at this door before it answered');
    const made = await hub.store.pool.query<{ origin: string }>("SELECT origin FROM hub_changes WHERE tenant_id = $1 AND kind = 'user.pin' AND external_user_id = 'bob'", [tenantId]);
    assert.deepEqual(made.rows, [{ origin: `back-${process.pid}` }]);
    await until(() => pins('front').has(tenantId, 'bob'), 15_000, "bob's PIN at the front door");
    assert.equal(await atVault('front', img.personB, BOB_PIN), 'granted:bob');
    // at the hub's own API, with the tenant's key
    const removed = await hubApi.post('/device/v1/remove-pin', { external_user_id: 'bob' });
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    await until(() => ['front', 'back'].every((d) => !pins(d).has(tenantId, 'bob')), 15_000, "bob's PIN gone at both doors");
    assert.equal(await atVault('front', img.personB, BOB_PIN), 'denied:not_identified');
    assert.deepEqual([(await hubApi.post('/device/v1/remove-pin', { external_user_id: 'bob' })).status], [404]);
    assert.deepEqual([(await hubApi.post('/device/v1/set-pin', { external_user_id: 'nobody', pin: '648203' })).status], [404]);
    const atDoor = await api('front').post('/device/v1/set-pin', { external_user_id: 'nobody', pin: '648203' });
    assert.deepEqual([atDoor.status, (atDoor.body.error as { code: string }).code], [404, 'user_not_found']);
    const again = await hubApi.post('/device/v1/set-pin', { external_user_id: 'bob', pin: BOB_PIN });
    assert.equal(again.status, 200);
    await until(() => ['front', 'back'].every((d) => pins(d).has(tenantId, 'bob')), 15_000, "bob's PIN again at both doors");
  });

  it('a PIN never travels or rests in the clear: not on the broker, not in the hub\'s database, not in a door\'s files, not in a log', async function () {
    for (const pin of [ALICE_PIN, BOB_PIN]) {
      assert.ok(onTheBroker.length > 10, 'the sniffer saw the traffic');
      assert.equal(onTheBroker.some((m) => m.includes(pin)), false, 'on the broker');
      assert.equal((await hubRows()).includes(pin), false, "in the hub's database");
      for (const [name, door] of Object.entries(doors)) {
        assert.equal(door.svc.logs().includes(pin), false, `in ${name}'s log`);
        for (const file of fs.readdirSync(door.svc.dataDir)) {
          const full = path.join(door.svc.dataDir, file);
          if (fs.statSync(full).isFile()) assert.equal(fs.readFileSync(full).includes(pin), false, `in ${name}'s ${file}`);
        }
      }
    }
  });

  it('a door of an earlier release gets each PIN change as user.erased (authenticated as such) and snapshots without PINs; a new door loads PINs with its snapshot', async function () {
    const keyring = new TenantKeyring(tenantId, [{ ...(await hub.store.keys.current(tenantId)), sinceSeq: 1 }]);
    const range = async (takes: { models?: string[]; pins?: boolean }) => JSON.parse((await hub.store.changesAfterJson(tenantId, 0, 50, takes)).json) as Change[];
    const earlier = await range({ models: [FLEET_MODEL] });
    const current = await range({ models: [FLEET_MODEL], pins: true });
    assert.equal(earlier.length, current.length);
    const pinSeqs = current.filter((c) => c.kind === 'user.pin').map((c) => c.seq);
    assert.ok(pinSeqs.length >= 3, 'the PIN changes so far');
    for (const seq of pinSeqs) {
      const blank = earlier.find((c) => c.seq === seq)!;
      assert.equal(blank.kind, 'user.erased');
      assert.ok(isAuthentic((v) => keyring.changeKey(seq, v), 'change', tenantId, blank, CHANGE_FIELDS_OUTSIDE_AUTH), 'its MAC verifies as user.erased');
    }
    assert.ok(current.every((c) => isAuthentic((v) => keyring.changeKey(c.seq, v), 'change', tenantId, c, CHANGE_FIELDS_OUTSIDE_AUTH)));
    assert.equal((await hub.store.snapshotChunk(tenantId, null, 64)).users.some((u) => u.pin), false);
    assert.deepEqual((await hub.store.snapshotChunk(tenantId, null, 64, { pins: true })).users.filter((u) => u.pin).map((u) => u.external_user_id), ['alice', 'bob']);
    // a door that joins now loads a snapshot, PINs with it, and finds them with its own keys
    doors.late = await startDoor('late');
    await until(() => pins('late').has(tenantId, 'bob') && pins('late').has(tenantId, 'alice'), 20_000, 'the new door holds the PINs');
    assert.deepEqual(await pins('late').holders(tenantId, BOB_PIN), ['bob']);
    assert.deepEqual(await pins('late').holders(tenantId, '905172'), []);
  });

  it("a deletion takes the person's PIN everywhere; the earlier PIN change is blanked in the log", async function () {
    assert.equal((await api('back').post('/biometry/v1/delete-user', { external_user_id: 'alice' })).status, 200);
    await until(() => Object.keys(doors).every((d) => !pins(d).has(tenantId, 'alice')), 15_000, "alice's PIN gone at every door");
    const row = await hub.store.pool.query<{ pin: unknown }>("SELECT pin FROM hub_users WHERE tenant_id = $1 AND external_user_id = 'alice'", [tenantId]);
    assert.deepEqual(row.rows, [{ pin: null }]);
    const named = await hub.store.pool.query("SELECT 1 FROM hub_changes WHERE tenant_id = $1 AND kind = 'user.pin' AND external_user_id = 'alice'", [tenantId]);
    assert.equal(named.rowCount, 0, 'no PIN change names her any more');
    assert.deepEqual(await pins('front').holders(tenantId, ALICE_PIN), []);
  });

  it('with the hub down, a PIN set at a door is refused with 503 and nothing is written', async function () {
    await hub.close();
    const res = await api('front').post('/device/v1/set-pin', { external_user_id: 'bob', pin: '416093' });
    assert.deepEqual([res.status, (res.body.error as { code: string }).code], [503, 'hub_unavailable']);
    assert.match((res.body.error as { message: string }).message, /the hub did not answer within 5 s/);
    assert.deepEqual(await pins('front').holders(tenantId, '416093'), [], 'not set here on its own');
    assert.deepEqual(await pins('front').holders(tenantId, BOB_PIN), ['bob'], 'the PIN the hub holds still opens');
    assert.equal(syncOf('front').pending(), 0, 'nothing queued');
  });
});
