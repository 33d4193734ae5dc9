import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { publicKeyFromBase64 } from '../src/access/signed-command.ts';
import { normalize } from '../src/biometrics/embedding.ts';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { EventBus } from '../src/core/events.ts';
import { createLogger } from '../src/core/logger.ts';
import { HubStore } from '../src/hub/store.ts';
import { type Store, openStore } from '../src/store/index.ts';
import { loadDeviceKey, loadSigningKey } from '../src/sync/device-key.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { unwrapTenantKey } from '../src/sync/envelope.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { TenantKeyring } from '../src/sync/keyring.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import { authface, serveHub, stop } from './support/cli.ts';
import { testBroker } from './support/mqtt.ts';
import { PgReplicaPair } from './support/pg-replication.ts';

/**
 * Issue 21: the hub's database is a primary streaming synchronously to a standby (two PostgreSQL
 * clusters of the test's own). `authface hub serve` is given both hosts. Two doors send a stream of
 * enrolments and deletions; the primary dies with SIGKILL mid-stream and the standby is promoted.
 * Every change the hub acknowledged is in the new primary's log, no sequence number is used twice,
 * and both doors end with exactly the hub's people.
 */
describe('issue 21: the hub on a synchronous standby, its primary killed mid-stream', function () {
  this.timeout(300_000);
  const prefix = `authface-dbfail-${process.pid}`;
  const hubEnv = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex'), LOG_LEVEL: 'info' };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-dbfail-'));
  const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.cos(i * 3.1 + k)));
  let pair: PgReplicaPair;
  let brokerUrl: string;
  let tenantId: string;
  let apiKey: string;
  let hub: (ChildProcess & { url: string }) | undefined;
  let watcher: mqtt.MqttClient;
  /** Every acknowledgement the hub sent a door: change_id → seq. */
  const acknowledged = new Map<string, number>();
  const doors: { name: string; store: Store; sync: DeviceSync }[] = [];
  let hubOutput = '';

  const poll = async (check: () => boolean | Promise<boolean>, what: string, ms = 120_000) => {
    const end = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };

  async function startDoor(name: string): Promise<void> {
    const dataDir = path.join(dir, name);
    const keys = ['--public-key', loadDeviceKey(dataDir).publicKey, '--signing-key', loadSigningKey(dataDir).publicKey];
    const wrapped = JSON.parse((await authface(['hub', 'wrap-key', '--tenant', tenantId, '--device', name, ...keys, '--database-url', pair.url], hubEnv)).stdout);
    const { hub_public_key } = JSON.parse((await authface(['hub', 'key', '--tenant', tenantId, '--database-url', pair.url], hubEnv)).stdout) as { hub_public_key: string };
    const store = openStore(dataDir, undefined);
    store.tenants.create({ id: tenantId, name: 'acme', allowedOrigins: [], livenessMode: 'passive' });
    const sync = DeviceSync.start(store, new GalleryIndex(), new EventBus(), {
      deviceId: name,
      tenantId,
      url: brokerUrl,
      prefix,
      keyring: TenantKeyring.of(tenantId, unwrapTenantKey(wrapped.keys[0], loadDeviceKey(dataDir).privateKeyPem, { tenantId, deviceId: name })),
      hubKey: publicKeyFromBase64(hub_public_key),
      model: FLEET_MODEL,
      logger: createLogger('silent'),
    });
    doors.push({ name, store, sync });
    await poll(() => sync.connected, `${name} on the broker`, 10_000);
  }

  before(async function () {
    pair = await PgReplicaPair.create({ synchronous: true });
    brokerUrl = (await testBroker()).url;
    const added = JSON.parse((await authface(['hub', 'tenant', 'add', '--name', 'acme', '--database-url', pair.url], hubEnv)).stdout) as { tenant_id: string; api_key: string };
    tenantId = added.tenant_id;
    apiKey = added.api_key;
    hub = await serveHub({ databaseUrl: pair.url, brokerUrl, prefix }, hubEnv);
    hub.stdout?.on('data', (d: Buffer) => (hubOutput += d.toString()));
    hub.stderr?.on('data', (d: Buffer) => (hubOutput += d.toString()));
    watcher = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    watcher.on('message', (_topic, payload) => {
      let reply: { type?: string; status?: string; change_id?: string; seq?: number | null };
      try {
        reply = JSON.parse(payload.toString()) as typeof reply;
      } catch {
        return; // a retained message cleared
      }
      if (reply.type === 'ack' && reply.status === 'sequenced' && reply.change_id && reply.seq) acknowledged.set(reply.change_id, reply.seq);
    });
    await watcher.subscribeAsync(`${prefix}/sync/${tenantId}/device/+`, { qos: 1 });
    for (const name of ['front', 'back']) await startDoor(name);
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') fs.writeFileSync('/tmp/hub-output.log', hubOutput);
  });
  after(async function () {
    for (const d of doors) {
      await d.sync.close();
      d.store.close();
    }
    if (hub && hub.exitCode === null && hub.signalCode === null) await stop(hub);
    await watcher?.endAsync();
    const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    for (const head of [syncTopics(prefix, tenantId).head, syncTopics(prefix, tenantId).signedHead]) await c.publishAsync(head, '', { retain: true });
    for (const d of ['front', 'back']) await c.publishAsync(syncTopics(prefix, tenantId).state(d), '', { retain: true });
    await c.endAsync();
    await pair?.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('authface hub doctor says the database is replicated synchronously, and names both hosts', async function () {
    const { stdout } = await authface(['hub', 'doctor', '--database-url', pair.url], hubEnv);
    assert.match(stdout, new RegExp(`✓ database +writing to 127\\.0\\.0\\.1:${pair.primary.port}`));
    assert.match(stdout, /✓ replicas +synchronous \(synchronous_commit=on, standbys: standby streaming sync\)/);
    const single = await authface(['hub', 'doctor', '--database-url', pair.primary.url], hubEnv);
    assert.match(single.stdout, /! failover +the database URL names one host/);
  });

  it('killed mid-stream and the standby promoted: every acknowledged change is in the new log, no number twice, both doors end with the hub\'s people', async function () {
    const [front, back] = doors;
    // 300 enrolments at the front door, and the back door deleting every sixth one once it holds it
    for (let i = 0; i < 300; i++) front.store.users.enroll(tenantId, `p${i}`, { [FLEET_MODEL]: face(i) });
    const deleting = (async () => {
      for (let i = 0; i < 300; i += 6) {
        await poll(() => back.store.users.get(tenantId, `p${i}`) !== undefined, `p${i} at the back door`);
        back.store.eraseUser(tenantId, `p${i}`, () => null);
      }
    })();
    const head = async (node: PgReplicaPair['primary']) => Number((await pair.query(node, 'SELECT COALESCE(MAX(seq), 0) AS n FROM hub_changes')).rows[0].n);
    await poll(() => acknowledged.size >= 100, 'a hundred changes acknowledged');
    const ackedBefore = new Map(acknowledged);
    pair.killPrimary();
    const died = performance.now();
    // while no host takes writes, the hub's API says so (and its process carries on)
    const listUsers = () => fetch(`${hub!.url}/biometry/v1/list-users`, { method: 'POST', headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' }, body: '{}' });
    const during = await listUsers();
    const refusal = (await during.json()) as { error: { code: string } };
    assert.deepEqual([during.status, refusal.error.code, during.headers.get('retry-after')], [503, 'database_unavailable', '2']);
    await pair.promoteStandby();
    const promoted = performance.now();
    const atPromotion = await head(pair.standby);
    await poll(async () => (await head(pair.standby)) > atPromotion, 'a change sequenced on the promoted standby');
    const firstOnNew = performance.now();
    await deleting;
    const hubStore = await HubStore.open(pair.url);
    try {
      await poll(
        async () => {
          const digest = await hubStore.digest(tenantId);
          const top = await hubStore.headSeq(tenantId);
          return doors.every((d) => d.sync.pending() === 0 && d.sync.cursor === top && d.store.users.digest(tenantId).digest === digest);
        },
        'both doors converged with the hub',
      );
      const converged = performance.now();
      assert.equal((await listUsers()).status, 200, "the hub's API answers again");
      console.log(
        `      primary killed → standby promoted ${Math.round(promoted - died)} ms → first change sequenced on it ${Math.round(firstOnNew - died)} ms after the death; every door converged ${Math.round(converged - firstOnNew)} ms after that`,
      );
      const rows = (await hubStore.pool.query<{ seq: string; change_id: string; kind: string; external_user_id: string }>('SELECT seq, change_id, kind, external_user_id FROM hub_changes WHERE tenant_id = $1 ORDER BY seq', [tenantId])).rows;
      const seqs = rows.map((r) => Number(r.seq));
      assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), 'no number twice, none skipped');
      assert.equal(new Set(rows.map((r) => r.change_id)).size, rows.length, 'each change once');
      const bySeq = new Map(rows.map((r) => [Number(r.seq), r.change_id]));
      assert.ok(ackedBefore.size >= 100 && ackedBefore.size < 350, `killed mid-stream: ${ackedBefore.size} acknowledged before the death`);
      for (const [changeId, seq] of acknowledged) assert.equal(bySeq.get(seq), changeId, `acknowledged change ${changeId} at ${seq} is in the new primary's log`);
      // the people: 300 enrolled, every sixth deleted
      const expected = Array.from({ length: 300 }, (_, i) => i)
        .filter((i) => i % 6 !== 0)
        .map((i) => `p${i}`)
        .sort();
      const live = (await hubStore.pool.query<{ external_user_id: string }>('SELECT external_user_id FROM hub_users WHERE tenant_id = $1 AND NOT deleted ORDER BY external_user_id COLLATE "C"', [tenantId])).rows.map((r) => r.external_user_id);
      assert.deepEqual(live, expected);
    } finally {
      await hubStore.close();
    }
  });
});
