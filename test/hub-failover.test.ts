import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import crypto from 'node:crypto';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import { normalize } from '../src/biometrics/embedding.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { EventBus } from '../src/core/events.ts';
import { createLogger } from '../src/core/logger.ts';
import { HubStore } from '../src/hub/store.ts';
import { type Store, openStore } from '../src/store/index.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { unwrapTenantKey } from '../src/sync/envelope.ts';
import { loadDeviceKey, loadSigningKey } from '../src/sync/device-key.ts';
import { publicKeyFromBase64 } from '../src/access/signed-command.ts';
import { TenantKeyring } from '../src/sync/keyring.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import { userSetDigest } from '../src/sync/digest.ts';
import { CLI, authface, joinDoorByCli, serve, serveHub, servedChildren, stop } from './support/cli.ts';
import { ROOT } from './support/datasets.ts';
import { testBroker } from './support/mqtt.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';

/**
 * Two `authface hub serve` processes on one database share the work; one is killed with SIGKILL
 * while a door sends 600 enrolments. Nothing is lost and no sequence number is used twice.
 */
describe('two hubs on one database, one killed mid-stream', function () {
  this.timeout(300_000);
  const prefix = `authface-failover-${process.pid}`;
  const hubEnv = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex'), LOG_LEVEL: 'info' };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-failover-'));
  let url: string;
  let db: TestDatabase;
  let tenantId: string;
  let store: Store;
  let sync: DeviceSync | undefined;
  const hubs: ChildProcess[] = [];

  const startHub = async () => {
    const child = await serveHub({ databaseUrl: db.url, brokerUrl: url, prefix }, hubEnv);
    hubs.push(child);
    return child;
  };
  const poll = async (check: () => boolean | Promise<boolean>, what: string, ms = 90_000) => {
    const end = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };

  before(async function () {
    url = (await testBroker()).url;
    db = await createTestDatabase();
    tenantId = (JSON.parse((await authface(['hub', 'tenant', 'add', '--name', 'acme', '--database-url', db.url], hubEnv)).stdout) as { tenant_id: string }).tenant_id;
    const dataDir = path.join(dir, 'door');
    const keys = ['--public-key', loadDeviceKey(dataDir).publicKey, '--signing-key', loadSigningKey(dataDir).publicKey];
    const wrapped = JSON.parse((await authface(['hub', 'wrap-key', '--tenant', tenantId, '--device', 'door', ...keys, '--database-url', db.url], hubEnv)).stdout);
    const { hub_public_key } = JSON.parse((await authface(['hub', 'key', '--tenant', tenantId, '--database-url', db.url], hubEnv)).stdout) as { hub_public_key: string };
    store = openStore(dataDir, undefined);
    store.tenants.create({ id: tenantId, name: 'acme', allowedOrigins: [], livenessMode: 'passive' });
    await startHub();
    await startHub();
    sync = DeviceSync.start(store, new GalleryIndex(), new EventBus(), {
      deviceId: 'door',
      tenantId,
      url,
      prefix,
      keyring: TenantKeyring.of(tenantId, unwrapTenantKey(wrapped.keys[0], loadDeviceKey(dataDir).privateKeyPem, { tenantId, deviceId: 'door' })),
      hubKey: publicKeyFromBase64(hub_public_key),
      model: FLEET_MODEL,
      logger: createLogger('silent'),
    });
    await poll(() => sync?.connected === true, 'the door on the broker');
  });
  after(async function () {
    await sync?.close();
    store?.close();
    for (const h of hubs) if (h.exitCode === null && h.signalCode === null) await stop(h);
    const c = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
    for (const head of [syncTopics(prefix, tenantId).head, syncTopics(prefix, tenantId).signedHead]) await c.publishAsync(head, '', { retain: true });
    for (const d of ['door', 'late']) await c.publishAsync(syncTopics(prefix, tenantId).state(d), '', { retain: true });
    await c.endAsync();
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('600 enrolments: 1..600, each change once, none lost, and the door in step with the hub', async function () {
    const hub = await HubStore.open(db.url);
    try {
      const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.cos(i * 3.1 + k)));
      for (let i = 0; i < 600; i++) store.users.enroll(tenantId, `p${i}`, { [FLEET_MODEL]: face(i) });
      await poll(async () => (await hub.headSeq(tenantId)) >= 100, 'the first hundred sequenced');
      hubs[0].kill('SIGKILL'); // mid-stream, possibly between a commit and its publish
      await poll(async () => sync?.pending() === 0 && (await hub.headSeq(tenantId)) === 601 && sync.cursor === 601, 'all 600 sequenced, acknowledged and applied');
      const rows = (await hub.pool.query<{ seq: string; change_id: string }>('SELECT seq, change_id FROM hub_changes WHERE tenant_id = $1 ORDER BY seq', [tenantId])).rows;
      // the tenant's settings first, then the 600
      assert.deepEqual(rows.map((r) => Number(r.seq)), Array.from({ length: 601 }, (_, i) => i + 1), 'no number twice, none skipped');
      assert.equal(new Set(rows.map((r) => r.change_id)).size, 601, 'each change once');
      assert.equal(store.users.digest(tenantId).digest, await hub.digest(tenantId));
    } finally {
      await hub.close();
    }
  });

  it('a new door loads a snapshot; killed with SIGKILL part-way (nothing of it applied yet) it resumes from its progress, then follows the log from the snapshot', async function () {
    const hub = await HubStore.open(db.url);
    try {
      const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.sin(i * 1.3 + k)));
      for (let i = 0; i < 2000; i++) store.users.enroll(tenantId, `q${i}`, { [FLEET_MODEL]: face(i) });
      await poll(async () => sync?.pending() === 0 && (await hub.headSeq(tenantId)) === 2601, 'the hub holding 2,600 changes');
      const dataDir = path.join(dir, 'late');
      const joined = await joinDoorByCli('late', { dir, tenantId, databaseUrl: db.url, hubEnv, brokerUrl: url, prefix });
      const env = { ...joined.env, AUTHFACE_DEVICE_CONFIG: joined.configFile, PORT: '0' };
      const door = spawn(process.execPath, [...CLI, 'serve'], { cwd: ROOT, env: { ...process.env, ...env } });
      servedChildren.add(door);
      // read the door's own database as it loads (SQLite lets a reader in beside the writer)
      const state = () => {
        const file = path.join(dataDir, 'authface.db');
        const none = { cursor: 0, users: [] as string[], staged: [] as string[], after: null as string | null };
        if (!fs.existsSync(file)) return none;
        const reader = new Database(file, { readonly: true, fileMustExist: true });
        try {
          const cursor = (reader.prepare('SELECT applied_seq AS n FROM sync_cursors').get() as { n: number } | undefined)?.n ?? 0;
          const users = (reader.prepare('SELECT external_user_id AS id FROM users WHERE deleted_at IS NULL').all() as { id: string }[]).map((u) => u.id);
          const staged = (reader.prepare('SELECT external_user_id AS id FROM sync_snapshot_users WHERE user IS NOT NULL').all() as { id: string }[]).map((u) => u.id);
          const after = (reader.prepare('SELECT after_user AS a FROM sync_snapshots').get() as { a: string | null } | undefined)?.a ?? null;
          return { cursor, users, staged, after };
        } catch {
          return none; // not migrated yet
        } finally {
          reader.close();
        }
      };
      await poll(() => state().staged.length >= 800, 'the door part-way through the snapshot', 120_000);
      const exited = new Promise((r) => door.once('exit', r));
      door.kill('SIGKILL');
      await exited;
      const atKill = state();
      assert.ok(atKill.after !== null && atKill.cursor === 0, `killed part-way through the snapshot (after ${atKill.after}, ${atKill.staged.length} of 2,600 people staged)`);
      console.log(`      killed with ${atKill.staged.length} of 2,600 people staged (snapshot after ${atKill.after})`);
      assert.deepEqual(atKill.users, [], 'nothing of a snapshot is applied before its last chunk is in');
      const hubIds = (await hub.pool.query<{ id: string }>('SELECT external_user_id AS id FROM hub_users WHERE tenant_id = $1 AND NOT deleted', [tenantId])).rows.map((r) => r.id);
      const upTo = atKill.after as string;
      assert.deepEqual(atKill.staged.sort(), hubIds.filter((id) => Buffer.compare(Buffer.from(id), Buffer.from(upTo)) <= 0).sort(), 'exactly the people of the chunks it recorded as staged');
      // while it is down: someone it already staged is deleted, and someone new is enrolled
      store.eraseUser(tenantId, atKill.staged[0], () => null);
      store.users.enroll(tenantId, 'new-during-the-outage', { [FLEET_MODEL]: face(9999) });
      await poll(async () => sync?.pending() === 0 && (await hub.headSeq(tenantId)) === 2603, 'both changes at the hub');
      const again = await serve(env);
      try {
        await poll(() => state().cursor === 2603 && state().after === null, 'the door finishing the snapshot and following the log to the head', 120_000);
        const reader = new Database(path.join(dataDir, 'authface.db'), { readonly: true });
        const users = reader.prepare('SELECT external_user_id, version FROM users WHERE deleted_at IS NULL').all() as { external_user_id: string; version: number }[];
        reader.close();
        assert.equal(userSetDigest(users.map((u) => [u.external_user_id, u.version, []])), await hub.digest(tenantId), 'the door holds exactly the hub’s people');
      } finally {
        await stop(again.child);
      }
    } finally {
      await hub.close();
    }
  });

  it('a hub killed with SIGKILL between its commit and its publish: the change is neither lost nor sequenced twice', async function () {
    const hub = await HubStore.open(db.url);
    try {
      for (const h of hubs) if (h.exitCode === null && h.signalCode === null) await stop(h);
      const crashing = await serveHub({ databaseUrl: db.url, brokerUrl: url, prefix }, { ...hubEnv, NODE_OPTIONS: `--import=${pathToFileURL(path.join(ROOT, 'test', 'support', 'crash-before-publish.mjs')).href}` });
      hubs.push(crashing);
      const head0 = await hub.headSeq(tenantId);
      const died = new Promise<string | null>((resolve) => crashing.once('exit', (_code, signal) => resolve(signal)));
      store.users.enroll(tenantId, 'committed-then-crashed', { [FLEET_MODEL]: normalize(Float32Array.from({ length: 128 }, (_, k) => Math.sin(k * 0.77))) });
      assert.equal(await died, 'SIGKILL', 'the hub died on its way to publish');
      const sequenced = () => hub.pool.query(`SELECT seq FROM hub_changes WHERE tenant_id = $1 AND external_user_id = 'committed-then-crashed'`, [tenantId]);
      assert.deepEqual((await sequenced()).rows.map((r) => Number(r.seq)), [head0 + 1], 'committed before the crash');
      assert.equal(sync?.cursor, head0, 'nobody heard of it on the log');
      await startHub();
      // the next hub announces its head: the door fetches the change it never saw published
      await poll(() => sync?.pending() === 0 && sync.cursor === head0 + 1, 'the change acknowledged and applied through the log');
      assert.deepEqual((await sequenced()).rows.map((r) => Number(r.seq)), [head0 + 1], 'sequenced once');
      assert.equal(await hub.headSeq(tenantId), head0 + 1);
    } finally {
      await hub.close();
    }
  });
});
