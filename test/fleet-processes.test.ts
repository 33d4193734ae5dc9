import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { stringify } from 'yaml';
import mqtt from 'mqtt';
import { HubStore } from '../src/hub/store.ts';
import { ROOT } from './support/datasets.ts';
import { authface, serve, serveHub, stop } from './support/cli.ts';
import { Client } from './support/client.ts';
import { testBroker } from './support/mqtt.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';

/**
 * The fleet as an operator sets it up, with the CLI: `authface hub tenant add`, `authface sync key`
 * on each device, `authface hub wrap-key` for each, then `authface hub serve` and two
 * `authface serve` processes. An enrolment at one door is identified at the other.
 */
describe('fleet as processes: authface hub serve and two authface serve doors (one with its clock a day ahead)', function () {
  this.timeout(240_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-fleet-'));
  const prefix = `authface-fleetp-${process.pid}`;
  const hubEnv = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex') };
  let db: TestDatabase;
  let hub: (ChildProcess & { url: string }) | undefined;
  let hubApi: Client;
  let img: Photos;
  let brokerUrl: string;
  const doors: { child: ChildProcess; api: Client }[] = [];

  before(async function () {
    img = await photos();
    brokerUrl = (await testBroker()).url;
    db = await createTestDatabase();
    const added = (await authface(['hub', 'tenant', 'add', '--name', 'acme', '--allowed-origin', 'https://app.example.com', '--liveness', 'passive', '--database-url', db.url], hubEnv)).stdout;
    const { tenant_id: tenantId, api_key: hubKey } = JSON.parse(added) as { tenant_id: string; api_key: string };
    hub = await serveHub({ databaseUrl: db.url, brokerUrl, prefix }, hubEnv);
    hubApi = new Client(hub.url, hubKey);
    for (const name of ['front', 'back']) {
      const dataDir = path.join(dir, name);
      const env = { AUTHFACE_DATA_DIR: dataDir };
      const { device_public_key } = JSON.parse((await authface(['sync', 'key'], env)).stdout) as { device_public_key: string };
      const wrapped = (await authface(['hub', 'wrap-key', '--tenant', tenantId, '--device', name, '--public-key', device_public_key, '--database-url', db.url], hubEnv)).stdout;
      assert.equal(fs.statSync(path.join(dataDir, 'device.key')).mode & 0o777, 0o600);
      fs.writeFileSync(path.join(dir, `${name}-tenant-key.json`), wrapped);
      fs.writeFileSync(
        path.join(dir, `${name}.yaml`),
        stringify({
          device_id: name,
          tenant_id: tenantId,
          liveness: 'passive',
          doors: [{ id: 'main', relay: { driver: 'simulated' } }],
          mqtt: { url: brokerUrl, topic_prefix: prefix },
          sync: { tenant_key_file: path.join(dir, `${name}-tenant-key.json`) },
        }),
      );
      // the back door's clock is a day ahead: order comes from the hub's sequence, never from clocks
      const skewed: Record<string, string> = name === 'back' ? { NODE_OPTIONS: `--import=${pathToFileURL(path.join(ROOT, 'test', 'support', 'skewed-clock.mjs')).href}`, AUTHFACE_TEST_CLOCK_SKEW_MS: String(86_400_000) } : {};
      const served = await serve({ ...env, ...skewed, AUTHFACE_DEVICE_CONFIG: path.join(dir, `${name}.yaml`) });
      // the integrator's key for the fleet tenant on this door
      const { api_key } = JSON.parse((await authface(['key', 'create', '--tenant', tenantId], env)).stdout) as { api_key: string };
      await authface(['tenant', 'update', '--tenant', tenantId, '--allowed-origin', 'https://app.example.com', '--liveness', 'passive'], env);
      doors.push({ child: served.child, api: new Client(served.url, api_key) });
    }
  });
  after(async function () {
    for (const d of doors) if (d.child.exitCode === null && d.child.signalCode === null) await stop(d.child);
    if (hub) await stop(hub);
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('enrol at the front door, identified at the back door; deleted at the back door, no longer at the front', async function () {
    const enrolled = (await doors[0].api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result;
    assert.equal(enrolled.status, 'success', JSON.stringify(enrolled));
    let result: Record<string, unknown> = {};
    for (let i = 0; i < 40; i++) {
      result = (await doors[1].api.run('identify', thrice(img.personA[1]))).result;
      if (result.status === 'success') break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.deepEqual([result.status, result.external_user_id], ['success', 'alice']);
    assert.equal((await doors[1].api.post('/biometry/v1/delete-user', { external_user_id: 'alice' })).status, 200);
    let gone = false;
    for (let i = 0; i < 40 && !gone; i++) {
      gone = (await doors[0].api.post('/biometry/v1/get-user', { external_user_id: 'alice' })).status === 404;
      if (!gone) await new Promise((r) => setTimeout(r, 250));
    }
    assert.ok(gone, 'the deletion reached the front door');
  });

  it("an integrator enrols through the hub's own /biometry/v1 and capture page: both doors identify; a face already at a door is a duplicate at the hub; a deletion at the hub reaches both", async function () {
    const identifiedAt = async (door: number, photo: Buffer) => {
      let result: Record<string, unknown> = {};
      for (let i = 0; i < 40; i++) {
        result = (await doors[door].api.run('identify', thrice(photo))).result;
        if (result.status === 'success') break;
        await new Promise((r) => setTimeout(r, 250));
      }
      return result;
    };
    const enrolled = (await hubApi.run('enroll', thrice(img.personA[0]), { externalUserId: 'bob' })).result;
    assert.deepEqual([enrolled.status, enrolled.external_user_id], ['success', 'bob'], JSON.stringify(enrolled));
    const details = (await hubApi.post<{ user: { version: number; templates: unknown[] } }>('/biometry/v1/get-user', { external_user_id: 'bob' })).body.user;
    assert.equal(details.templates.length, 1);
    for (const door of [0, 1]) {
      const result = await identifiedAt(door, img.personA[1]);
      assert.deepEqual([result.status, result.external_user_id], ['success', 'bob'], `door ${door}`);
    }
    assert.equal((await hubApi.run('verify', thrice(img.personA[2]), { externalUserId: 'bob' })).result.status, 'success', '1:1 at the hub');

    // enrolled at the front door, then at the hub under another id: the hub's 1:N sees the door's enrolment
    assert.equal((await doors[0].api.run('enroll', thrice(img.personB), { externalUserId: 'carol' })).result.status, 'success');
    let duplicate: Record<string, unknown> = {};
    for (let i = 0; i < 40; i++) {
      duplicate = (await hubApi.run('enroll', thrice(img.personB), { externalUserId: 'carol-again' })).result;
      if (duplicate.reason === 'conflict') break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.deepEqual([duplicate.status, duplicate.reason], ['fail', 'conflict']);
    assert.equal((await hubApi.post('/biometry/v1/list-users', {})).body.total, 2, 'bob and carol, as the whole fleet');

    assert.equal((await hubApi.post('/biometry/v1/delete-user', { external_user_id: 'bob' })).status, 200);
    for (const door of [0, 1]) {
      let gone = false;
      for (let i = 0; i < 40 && !gone; i++) {
        gone = (await doors[door].api.post('/biometry/v1/get-user', { external_user_id: 'bob' })).status === 404;
        if (!gone) await new Promise((r) => setTimeout(r, 250));
      }
      assert.ok(gone, `the hub's deletion reached door ${door}`);
    }
    const result = (await doors[1].api.run('identify', thrice(img.personA[1]))).result;
    assert.notEqual(result.external_user_id, 'bob');
  });

  it('the hub sees both doors; a door killed with SIGKILL shows offline (its last will), the erasure stays complete', async function () {
    const hubStore = await HubStore.open(db.url);
    try {
      const tenantId = (await hubStore.pool.query<{ tenant_id: string }>('SELECT tenant_id FROM hub_tenants')).rows[0].tenant_id;
      const poll = async (check: () => Promise<boolean>, what: string) => {
        for (let i = 0; !(await check()); i++) {
          assert.ok(i < 200, what);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      await poll(async () => (await hubStore.devices(tenantId)).filter((d) => d.state === 'online' && d.lag === 0).length === 2, 'both doors online and in step');
      // the skewed door reports its own time a day ahead, and it made no difference to anything above
      const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
      const states: Record<string, { time?: string }> = {};
      c.on('message', (topic, payload) => payload.length && (states[topic.split('/').pop() as string] = JSON.parse(payload.toString())));
      await c.subscribeAsync(`${prefix}/sync/${tenantId}/state/+`, { qos: 1 });
      await poll(async () => Object.keys(states).length === 2, 'the retained states');
      await c.endAsync();
      const ahead = Date.parse(states.back.time as string) - Date.parse(states.front.time as string);
      assert.ok(ahead > 86_000_000 && ahead < 86_800_000, `the back door's clock is a day ahead (${ahead} ms)`);
      assert.equal((await hubStore.erasureStatus(tenantId, 'alice'))?.complete, true);
      assert.equal((await hubStore.erasureStatus(tenantId, 'bob'))?.complete, true, 'the deletion made at the hub too');
      // what an admin sees
      const status = JSON.parse((await authface(['hub', 'status', '--tenant', tenantId, '--database-url', db.url], hubEnv)).stdout) as {
        head: number;
        devices: { device_id: string; state: string; lag: number; diverged: boolean }[];
        conflicts: unknown[];
      };
      assert.equal(status.head, await hubStore.headSeq(tenantId));
      assert.deepEqual(status.devices.map((d) => [d.device_id, d.state, d.lag, d.diverged]), [['back', 'online', 0, false], ['front', 'online', 0, false]]);
      assert.deepEqual(status.conflicts, []);
      const exited = new Promise((r) => doors[0].child.once('exit', r));
      doors[0].child.kill('SIGKILL');
      await exited;
      await poll(async () => (await hubStore.devices(tenantId)).find((d) => d.deviceId === 'front')?.state === 'offline', 'the front door offline');
    } finally {
      await hubStore.close();
    }
  });
});
