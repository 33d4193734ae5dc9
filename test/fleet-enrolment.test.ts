import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { loadSettings } from '../src/config/settings.ts';
import { createLogger } from '../src/core/logger.ts';
import { type Hub, startHub } from '../src/hub/service.ts';
import type { DeviceSync } from '../src/sync/device-sync.ts';
import { writeKeyFile } from '../src/sync/keyring.ts';
import { loadSigningKey } from '../src/sync/device-key.ts';
import { signMessage } from '../src/sync/signature.ts';
import { joinTestDoor } from './support/fleet.ts';
import { authenticate, sealTemplate } from '../src/sync/envelope.ts';
import { type UserUpsert, syncTopics } from '../src/sync/protocol.ts';
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
  /** A person's template at version 1, sealed under the tenant key as a door would send it. */
  const upsertOf = async (externalUserId: string, photo: Buffer): Promise<UserUpsert> => {
    const { key } = await hub!.store.keys.current(tenantId);
    const probe = await door.svc.service.analyzer.analyze(Buffer.from(photo), { mode: 'capture', models: [FLEET_MODEL] }, { lane: 'test', priority: false });
    const embedding = probe.embeddings[FLEET_MODEL];
    assert.ok(embedding);
    const template = sealTemplate(key, embedding, { tenantId, externalUserId, version: 1, model: FLEET_MODEL, keyVersion: 1 });
    return { kind: 'user.upsert', external_user_id: externalUserId, version: 1, model: FLEET_MODEL, key_version: 1, template };
  };

  /** Resolves right after the hub's next periodic head: a change the hub makes then reaches the door only with the one after (5 s later). */
  const afterFreshHead = async () => {
    const watcher = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    const fresh = new Promise<void>((resolve) => watcher.on('message', (_t, _p, packet) => !packet.retain && resolve()));
    await watcher.subscribeAsync(syncTopics(prefix, tenantId).signedHead, { qos: 1 });
    await fresh;
    await watcher.endAsync();
  };

  before(async function () {
    img = await photos();
    brokerUrl = (await testBroker()).url;
    db = await createTestDatabase();
    hub = await startTheHub();
    tenantId = (await hub.biometry.tenants.create({ name: 'acme', allowedOrigins: ['https://app.example.com'], livenessMode: 'passive' })).id;
    const keyFile = path.join(keysDir, 'door.json');
    const hubStore = hub.store;
    const hubKey = (await hubStore.keys.commandKey(tenantId)).publicKey;
    door = await startTestDevice(
      {
        device_id: `door-${process.pid}`,
        tenant_id: tenantId,
        liveness: 'passive',
        doors: [{ id: 'main', relay: { driver: 'simulated' } }],
        mqtt: { url: brokerUrl, topic_prefix: prefix },
        remote_commands: { public_key: hubKey },
        sync: { tenant_key_file: keyFile },
      },
      {},
      { tenantId, prepare: async (dataDir) => writeKeyFile(keyFile, (await joinTestDoor(hubStore, { tenantId, deviceId: `door-${process.pid}`, dataDir, brokerUrl, prefix })).tenantKeys) },
    );
    api = new Client(door.svc.url, door.apiKey);
    await until(() => syncOf().connected, 10_000, 'the door on the broker');
  });
  after(async function () {
    await door?.close();
    await hub?.close();
    const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    for (const head of [syncTopics(prefix, tenantId).head, syncTopics(prefix, tenantId).signedHead]) await c.publishAsync(head, '', { retain: true });
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
    const bob = await upsertOf('bob', img.personB);
    await afterFreshHead();
    assert.equal((await hub!.store.append(tenantId, bob, { origin: 'hub' })).status, 'sequenced');
    assert.equal(door.svc.service.store.users.get(tenantId, 'bob'), undefined);
    const { result } = await api.run('enroll', thrice(img.personB), { externalUserId: 'robert' });
    assert.deepEqual([result.status, result.reason], ['fail', 'conflict'], JSON.stringify(result));
    assert.ok((result.score as number) >= 0.9, 'the score of the person it matched');
    assert.match(door.svc.logs(), /the hub refused a template made here/, 'refused by the hub, not by the door');
    assert.equal(door.svc.service.store.users.get(tenantId, 'robert'), undefined);
    const robert = await hub!.store.pool.query(`SELECT 1 FROM hub_changes WHERE tenant_id = $1 AND external_user_id = 'robert'`, [tenantId]);
    assert.equal(robert.rowCount, 0, 'nothing sequenced, nothing recorded');
  });

  it("an update at the door goes through the hub too: one made on an older copy is decided again on the hub's newer template", async function () {
    await until(() => door.svc.service.store.users.get(tenantId, 'bob')?.version === 1, 10_000, 'bob at the door');
    // bob's template is replaced centrally (v2) and not yet published when he updates at the door
    await afterFreshHead();
    const v2 = { ...(await upsertOf('bob', img.personB)), version: 2 };
    const { key } = await hub!.store.keys.current(tenantId);
    const probe = await door.svc.service.analyzer.analyze(Buffer.from(img.personB), { mode: 'capture', models: [FLEET_MODEL] }, { lane: 'test', priority: false });
    v2.template = sealTemplate(key, probe.embeddings[FLEET_MODEL]!, { tenantId, externalUserId: 'bob', version: 2, model: FLEET_MODEL, keyVersion: 1 });
    assert.equal((await hub!.store.append(tenantId, v2, { origin: 'hub' })).status, 'sequenced');
    const { result } = await api.run('update_embedding', thrice(img.personB), { externalUserId: 'bob' });
    assert.equal(result.status, 'success', JSON.stringify(result));
    const versions = await hub!.store.pool.query<{ origin: string; version: number }>(
      `SELECT origin, (body->>'version')::int AS version FROM hub_changes WHERE tenant_id = $1 AND external_user_id = 'bob' ORDER BY seq`,
      [tenantId],
    );
    assert.deepEqual(versions.rows.map((r) => `${r.origin}:${r.version}`), ['hub:1', 'hub:2', `door-${process.pid}:3`], "the door's update sequenced after the hub's, not over it");
    assert.equal(door.svc.service.store.users.get(tenantId, 'bob')?.version, 3);
    await until(() => syncOf().pending() === 0, 5_000, 'nothing left to send');
    assert.deepEqual(await hub!.store.conflicts(tenantId), [], 'no conflict to resolve: it was decided again');
  });

  it('an update whose new face the hub holds under another id (one the door has not seen) is refused at the door', async function () {
    await afterFreshHead();
    // the same person as alice, enrolled centrally as someone else and not yet published
    assert.equal((await hub!.store.append(tenantId, await upsertOf('alice-twin', img.personA[2]), { origin: 'hub' })).status, 'sequenced');
    const { result } = await api.run('update_embedding', thrice(img.personA[1]), { externalUserId: 'alice' });
    assert.deepEqual([result.status, result.reason], ['fail', 'conflict'], JSON.stringify(result));
    assert.equal(door.svc.service.store.users.get(tenantId, 'alice')?.version, 1, "alice's template unchanged");
    assert.equal((await hub!.store.userState(hub!.store.pool, tenantId, 'alice'))?.version, 1);
    assert.ok(await hub!.biometry.eraseUser(tenantId, 'alice-twin', () => ({ tenantId, type: 'user_deleted', flow: null, sessionId: null, externalUserId: 'erased', result: 'success', reason: null, score: null })));
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
    // the hub's own index forgot her too, though her deletion was compacted away before it read it
    const check = await hub!.sync.fleetCheck!(tenantId, await upsertOf('zed', img.personA[0]), 'enroll');
    assert.equal(check.ok, true, JSON.stringify(check));
  });

  it('a door whose people differ from the hub\'s at the same sequence is repaired with a snapshot', async function () {
    const local = door.svc.service.store;
    const head = await hub!.store.headSeq(tenantId);
    await until(() => syncOf().cursor === head && syncOf().pending() === 0, 10_000, 'the door in step');
    const digestAtHub = await hub!.store.digest(tenantId);
    // damage that no change explains: a person the hub never had, and one of its people gone
    local.users.replicate(tenantId, 'phantom', 1, { [FLEET_MODEL]: Float32Array.from({ length: 128 }, (_, i) => (i === 0 ? 1 : 0)) });
    const bob = local.users.get(tenantId, 'bob');
    assert.ok(bob);
    local.db.prepare('DELETE FROM templates WHERE user_id = ?').run(bob.id);
    local.db.prepare('DELETE FROM users WHERE id = ?').run(bob.id);
    local.groups.set(tenantId, 'phantom', ['staff']);
    assert.notEqual(local.users.digest(tenantId).digest, await hub!.store.digest(tenantId));
    syncOf().publishState();
    await until(() => local.users.digest(tenantId).digest === digestAtHub, 15_000, 'the door holding the hub\'s people again');
    assert.equal(local.users.get(tenantId, 'phantom'), undefined);
    assert.deepEqual(local.groups.of(tenantId, 'phantom'), [], 'and its group membership');
    assert.ok(local.users.get(tenantId, 'bob'));
    assert.equal(syncOf().cursor, head, 'the log goes on from where it was');
    const row = await hub!.store.pool.query<{ repaired_at: Date | null }>('SELECT repaired_at FROM hub_devices WHERE tenant_id = $1 AND device_id = $2', [tenantId, `door-${process.pid}`]);
    assert.ok(row.rows[0]?.repaired_at, 'the repair is recorded');
  });

  it('two enrolments of one face racing through two hub processes: the second is checked again and refused', async function () {
    // a second hub on the same database and broker: submissions go to either (a shared subscription)
    const second = await startTheHub();
    try {
      // each hub's real check runs, then waits until both have passed: both looked at a fleet
      // without this face, which is the race two hub processes (or two doors) can run
      let passed = 0;
      const firstVerdicts: string[] = [];
      let release = () => undefined as void;
      const bothChecked = new Promise<void>((resolve) => (release = resolve));
      for (const h of [hub!, second]) {
        const check = h.sync.fleetCheck;
        assert.ok(check);
        h.sync.fleetCheck = async (t, body, kind) => {
          const verdict = await check(t, body, kind);
          firstVerdicts.push(verdict.ok ? 'ok' : verdict.reason);
          if (++passed === 2) release();
          if (passed <= 2) await bothChecked;
          return verdict;
        };
      }
      const device = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
      const topics = syncTopics(prefix, tenantId);
      const acks = new Map<string, { status: string; reason: string | null }>();
      device.on('message', (_t, payload) => {
        const reply = JSON.parse(payload.toString()) as { type: string; change_id: string; status: string; reason: string | null };
        if (reply.type === 'ack') acks.set(reply.change_id, reply);
      });
      await device.subscribeAsync(topics.reply('racer'), { qos: 1 });
      // a second door of the tenant, joined: the hub hears a device only in its own name and with its signature
      const racerDir = path.join(keysDir, 'racer');
      await joinTestDoor(hub!.store, { tenantId, deviceId: 'racer', dataDir: racerDir, brokerUrl, prefix });
      const signingKey = loadSigningKey(racerDir).privateKey;
      const key = await hub!.store.keys.current(tenantId);
      const bodies = { erin: await upsertOf('erin', img.personA[1]), frank: await upsertOf('frank', img.personA[1]) };
      let sent = 0;
      const submit = (externalUserId: 'erin' | 'frank') => {
        const changeId = crypto.randomUUID();
        const body = bodies[externalUserId];
        // as a door of the tenant sends it: authenticated with the tenant key, signed with its own, marked with when it was sent
        const submission = signMessage(signingKey, 'submission', tenantId, authenticate(key, 'submission', tenantId, { device_id: 'racer', change_id: changeId, body, fleet_check: 'enroll' as const, sent: { boot: 1, n: ++sent } }));
        device.publish(topics.submit('racer'), JSON.stringify(submission), { qos: 1 });
        return changeId;
      };
      const [erin, frank] = [submit('erin'), submit('frank')];
      await until(() => acks.size === 2, 15_000, 'both submissions answered');
      await device.endAsync();
      const answers = [acks.get(erin), acks.get(frank)].map((a) => `${a?.status}:${a?.reason}`).sort();
      assert.deepEqual(firstVerdicts.slice(0, 2), ['ok', 'ok'], 'both first checks passed: the race happened');
      assert.deepEqual(answers, ['refused:duplicate_face', 'sequenced:null'], 'one enrolled, the other refused as the same face');
      const rows = await hub!.store.pool.query(`SELECT external_user_id FROM hub_users WHERE tenant_id = $1 AND external_user_id IN ('erin', 'frank') AND NOT deleted`, [tenantId]);
      assert.equal(rows.rowCount, 1, 'the fleet holds the face once');
    } finally {
      await second.close();
    }
  });

  it("a hub decision whose 1:N check missed a template sequenced since is not written: it is decided again", async function () {
    const through = await hub!.store.headSeq(tenantId);
    // another hub process (or a door) sequences a template after what this decision saw
    assert.equal((await hub!.store.append(tenantId, await upsertOf('grace', img.personA[2]), { origin: 'hub-2' })).status, 'sequenced');
    const probe = await door.svc.service.analyzer.analyze(Buffer.from(img.personA[2]), { mode: 'capture', models: [FLEET_MODEL] }, { lane: 'test', priority: false });
    assert.ok(probe.embeddings[FLEET_MODEL]);
    const session = await hub!.biometry.sessions.create({ tenantId, clientState: 'race-1', flow: 'enroll', externalUserId: 'heidi', redirectUrl: 'https://app.example.com/done', tokenHash: crypto.randomBytes(32), ttlSeconds: 60, challenge: null, doorId: null, candidates: null });
    assert.ok(session);
    const outcome = { status: 'success' as const, reason: null, score: null, resultUserId: 'heidi', eventId: 'evt_00000000-0000-4000-8000-000000000001' };
    const audit = { id: outcome.eventId, tenantId, type: 'session_finished' as const, flow: 'enroll' as const, sessionId: session.id, externalUserId: 'heidi', result: 'success' as const, reason: null, score: null };
    const stale = await hub!.biometry.finishSession(session, outcome, audit, { kind: 'enroll', externalUserId: 'heidi', templates: probe.embeddings, checkedThrough: through });
    assert.equal(stale, 'write_conflict');
    assert.equal((await hub!.biometry.sessions.byId(tenantId, session.id))?.status, 'pending', 'the session is still open, to be decided again');
    const heidi = await hub!.store.pool.query(`SELECT 1 FROM hub_changes WHERE tenant_id = $1 AND external_user_id = 'heidi'`, [tenantId]);
    assert.equal(heidi.rowCount, 0, 'nothing sequenced');
    // decided on what is there now, it would have seen grace: the same write at the head goes through
    const current = await hub!.biometry.finishSession(session, outcome, audit, { kind: 'enroll', externalUserId: 'heidi', templates: probe.embeddings, checkedThrough: await hub!.store.headSeq(tenantId) });
    assert.equal(current, 'finished');
    for (const id of ['grace', 'heidi']) {
      assert.ok(await hub!.biometry.eraseUser(tenantId, id, () => ({ tenantId, type: 'user_deleted', flow: null, sessionId: null, externalUserId: 'erased', result: 'success', reason: null, score: null })));
    }
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
