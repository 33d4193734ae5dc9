import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import mqtt from 'mqtt';
import { HubStore } from '../src/hub/store.ts';
import { MOBILEFACENET } from '../src/biometrics/matchers/index.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { ROOT } from './support/datasets.ts';
import { authface, joinDoorByCli, serve, serveHub, stop } from './support/cli.ts';
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
  const doors: { child: ChildProcess; api: Client; env: Record<string, string> }[] = [];
  let tenantId: string;
  const doorEnv = (name: string) => ({ AUTHFACE_DATA_DIR: path.join(dir, name) });

  /** Waits until the door takes an identify session redirecting to `redirectUrl` (its tenant allows the origin). */
  async function startsSession(api: Client, redirectUrl: string): Promise<void> {
    let status = 0;
    for (let i = 0; i < 60 && status !== 200; i++) {
      status = (await api.post('/biometry/v1/identify', { client_state: crypto.randomUUID(), redirect_url: redirectUrl })).status;
      if (status !== 200) await new Promise((r) => setTimeout(r, 250));
    }
    assert.equal(status, 200, `a session redirecting to ${redirectUrl}`);
  }

  before(async function () {
    img = await photos();
    brokerUrl = (await testBroker()).url;
    db = await createTestDatabase();
    const added = (await authface(['hub', 'tenant', 'add', '--name', 'acme', '--allowed-origin', 'https://app.example.com', '--liveness', 'passive', '--database-url', db.url], hubEnv)).stdout;
    const { tenant_id, api_key: hubKey } = JSON.parse(added) as { tenant_id: string; api_key: string };
    tenantId = tenant_id;
    hub = await serveHub({ databaseUrl: db.url, brokerUrl, prefix }, hubEnv);
    hubApi = new Client(hub.url, hubKey);
    for (const name of ['front', 'back']) {
      const dataDir = path.join(dir, name);
      const { env, configFile } = await joinDoorByCli(name, { dir, tenantId, databaseUrl: db.url, hubEnv, brokerUrl, prefix });
      assert.equal(fs.statSync(path.join(dataDir, 'device.key')).mode & 0o777, 0o600);
      // the back door's clock is a day ahead: order comes from the hub's sequence, never from clocks
      const skewed: Record<string, string> = name === 'back' ? { NODE_OPTIONS: `--import=${pathToFileURL(path.join(ROOT, 'test', 'support', 'skewed-clock.mjs')).href}`, AUTHFACE_TEST_CLOCK_SKEW_MS: String(86_400_000) } : {};
      const served = await serve({ ...env, ...skewed, AUTHFACE_DEVICE_CONFIG: configFile });
      // the integrator's key for the fleet tenant on this door; the tenant's origins and liveness
      // come from the hub's log (tenant add made them its first change)
      const { api_key } = JSON.parse((await authface(['key', 'create', '--tenant', tenantId], env)).stdout) as { api_key: string };
      const api = new Client(served.url, api_key);
      await startsSession(api, 'https://app.example.com/callback');
      doors.push({ child: served.child, api, env });
    }
  });
  after(async function () {
    for (const d of doors) if (d.child.exitCode === null && d.child.signalCode === null) await stop(d.child);
    if (hub) await stop(hub);
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('enrol at the front door, identified at the back door; updated at the back door, the front door has the new template; deleted at the back door, no longer at the front', async function () {
    const enrolled = (await doors[0].api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result;
    assert.equal(enrolled.status, 'success', JSON.stringify(enrolled));
    let result: Record<string, unknown> = {};
    for (let i = 0; i < 40; i++) {
      result = (await doors[1].api.run('identify', thrice(img.personA[1]))).result;
      if (result.status === 'success') break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.deepEqual([result.status, result.external_user_id], ['success', 'alice']);
    const updated = (await doors[1].api.run('update_embedding', thrice(img.personA[2]), { externalUserId: 'alice' })).result;
    assert.equal(updated.status, 'success', JSON.stringify(updated));
    let version = 0;
    for (let i = 0; i < 40 && version !== 2; i++) {
      version = (await doors[0].api.post<{ user: { version: number } }>('/biometry/v1/get-user', { external_user_id: 'alice' })).body.user.version;
      if (version !== 2) await new Promise((r) => setTimeout(r, 250));
    }
    assert.equal(version, 2, "the back door's update at the front door");
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
      // the hub made the new model's template too (before any capture at a door could migrate bob)
      let arrived = false;
      for (let i = 0; i < 40 && !arrived; i++) {
        arrived = (await doors[door].api.post('/biometry/v1/get-user', { external_user_id: 'bob' })).status === 200;
        if (!arrived) await new Promise((r) => setTimeout(r, 250));
      }
      const [status] = JSON.parse((await authface(['templates', 'status'], doors[door].env)).stdout) as { people: number; by_model: Record<string, number> }[];
      assert.deepEqual([status.people, status.by_model[MOBILEFACENET.id], status.by_model[FLEET_MODEL]], [1, 1, 1], `door ${door}: ${JSON.stringify(status)}`);
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

  it("an admin sets the tenant's origins and a person's groups at the hub (CLI); both doors apply them; a door's own copy is not edited", async function () {
    const hub = (args: string[]) => authface(['hub', ...args, '--tenant', tenantId, '--database-url', db.url], hubEnv);
    const added = JSON.parse((await hub(['group', 'add', '--group', 'staff', '--user', 'carol'])).stdout) as { groups: string[]; seq: number };
    assert.deepEqual(added.groups, ['staff']);
    await assert.rejects(hub(['group', 'add', '--group', 'staff', '--user', 'nobody']), (err: { stderr: string }) => /nobody is not enrolled/.test(err.stderr));
    await assert.rejects(hub(['group', 'add', '--group', 'no spaces', '--user', 'carol']), (err: { stderr: string }) => /a group name is 1-64 letters/.test(err.stderr));
    assert.deepEqual(JSON.parse((await hub(['group', 'list'])).stdout), [{ external_user_id: 'carol', groups: ['staff'] }]);
    const updated = JSON.parse((await hub(['tenant', 'update', '--allowed-origin', 'https://app.example.com', '--allowed-origin', 'https://kiosk.example.com'])).stdout) as { seq: number; liveness_mode: string };
    assert.equal(updated.seq, added.seq + 1);
    assert.equal(updated.liveness_mode, 'passive', 'what was not given stays');
    // the serving hub's next head tells the doors; they fetch and apply both changes
    for (const door of doors) await startsSession(door.api, 'https://kiosk.example.com/done');
    for (const name of ['front', 'back']) {
      const shown = JSON.parse((await authface(['tenant', 'show', '--tenant', tenantId], doorEnv(name))).stdout) as { allowed_origins: string[] };
      assert.deepEqual(shown.allowed_origins, ['https://app.example.com', 'https://kiosk.example.com'], name);
    }
    await assert.rejects(authface(['tenant', 'update', '--tenant', tenantId, '--name', 'local'], doorEnv('front')), (err: { stderr: string }) => /is a fleet tenant: change it at the hub/.test(err.stderr));
  });

  it('the hub sees both doors; a door killed with SIGKILL shows offline (its last will), the erasure stays complete', async function () {
    const hubStore = await HubStore.open(db.url);
    try {
      const poll = async (check: () => Promise<boolean>, what: string) => {
        for (let i = 0; !(await check()); i++) {
          assert.ok(i < 200, what);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      await poll(async () => (await hubStore.devices.list(tenantId)).filter((d) => d.state === 'online' && d.lag === 0).length === 2, 'both doors online and in step');
      // the skewed door reports its own time a day ahead, and it made no difference to anything above
      const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
      const states: Record<string, { time?: string }> = {};
      c.on('message', (topic, payload) => payload.length && (states[topic.split('/').pop() as string] = JSON.parse(payload.toString())));
      await c.subscribeAsync(`${prefix}/sync/${tenantId}/state/+`, { qos: 1 });
      await poll(async () => Object.keys(states).length === 2, 'the retained states');
      await c.endAsync();
      const ahead = Date.parse(states.back.time as string) - Date.parse(states.front.time as string);
      assert.ok(ahead > 86_000_000 && ahead < 86_800_000, `the back door's clock is a day ahead (${ahead} ms)`);
      assert.equal((await hubStore.devices.erasureStatus(tenantId, 'alice'))?.complete, true);
      assert.equal((await hubStore.devices.erasureStatus(tenantId, 'bob'))?.complete, true, 'the deletion made at the hub too');
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
      await poll(async () => (await hubStore.devices.list(tenantId)).find((d) => d.deviceId === 'front')?.state === 'offline', 'the front door offline');
    } finally {
      await hubStore.close();
    }
  });
});
