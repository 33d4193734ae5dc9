import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { parse as parseYaml } from 'yaml';
import { generateCommandKeys, signCommand } from '../src/access/signed-command.ts';
import { HubStore } from '../src/hub/store.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import { authface, serve, serveHub, stop } from './support/cli.ts';
import { testBroker, until } from './support/mqtt.ts';
import { KIOSK_HEADER, KIOSK_SECRET_FILE } from '../src/access/kiosk-secret.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';

/**
 * Joining takes one code: `authface hub device add` prints it, `authface join` on the device
 * makes the device's key pair there, registers its public key, receives the wrapped tenant key and
 * the hub's command key, and writes the device file, so `authface doctor` passes and `authface
 * serve` follows the tenant's log. A code works once, and only until it expires.
 */
describe('joining a fleet with one code (authface hub device add, authface join)', function () {
  this.timeout(180_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-join-'));
  const prefix = `authface-join-${process.pid}`;
  const hubEnv = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex') };
  let db: TestDatabase;
  let hub: (ChildProcess & { url: string }) | undefined;
  let door: ChildProcess | undefined;
  let doorUrl: string;
  let brokerUrl: string;
  let tenantId: string;
  let hubKey: string;

  const hubCli = (args: string[]) => authface(['hub', ...args, '--database-url', db.url], { ...hubEnv, ...(hub ? { PUBLIC_URL: hub.url } : {}) });
  const addDevice = async (name: string) => JSON.parse((await hubCli(['device', 'add', '--tenant', tenantId, '--name', name])).stdout) as { device_id: string; code: string; expires_at: string; on_the_device: string };
  const joinAs = (dataDir: string, code: string) => authface(['join', '--hub', hub!.url, '--code', code], { AUTHFACE_DATA_DIR: dataDir });
  const refusal = (pattern: RegExp) => (err: { stderr: string }) => pattern.test(err.stderr);

  before(async function () {
    brokerUrl = (await testBroker()).url;
    db = await createTestDatabase();
    const added = JSON.parse((await hubCli(['tenant', 'add', '--name', 'acme', '--allowed-origin', 'https://app.example.com'])).stdout) as { tenant_id: string; api_key: string };
    tenantId = added.tenant_id;
    hubKey = added.api_key;
    hub = await serveHub({ databaseUrl: db.url, brokerUrl, prefix }, hubEnv);
  });
  after(async function () {
    if (door && door.exitCode === null && door.signalCode === null) await stop(door);
    if (hub) await stop(hub);
    const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    if (tenantId) await c.publishAsync(syncTopics(prefix, tenantId).head, '', { retain: true });
    await c.endAsync();
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('device add prints a code; join writes the key and the device file; doctor passes; the door follows the log', async function () {
    const added = await addDevice('front');
    assert.match(added.code, /^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$/);
    assert.ok(Date.parse(added.expires_at) > Date.now() + 14 * 60_000, 'valid 15 minutes by default');
    assert.equal(added.on_the_device, `authface join --hub ${hub!.url} --code ${added.code}`);
    const dataDir = path.join(dir, 'front');
    const started = performance.now();
    const joined = JSON.parse((await joinAs(dataDir, added.code.toLowerCase())).stdout) as { device_id: string; tenant_id: string; config_file: string; tenant_key_file: string; next: string };
    // issue 20, the first hour, 9: the next step names the data directory too
    assert.ok(joined.next.startsWith(`AUTHFACE_DATA_DIR=${dataDir} AUTHFACE_DEVICE_CONFIG=${joined.config_file} authface doctor`), joined.next);
    console.log(`      authface join took ${Math.round(performance.now() - started)} ms (a CLI process: key pair, request, files)`);
    assert.deepEqual([joined.device_id, joined.tenant_id], ['front', tenantId]);
    // the private key stayed here: the hub holds the public key only
    const held = await HubStore.open(db.url, { masterKey: Buffer.from(hubEnv.AUTHFACE_HUB_MASTER_KEY, 'hex') });
    try {
      const row = await held.pool.query<{ public_key: string }>('SELECT public_key FROM hub_devices WHERE tenant_id = $1 AND device_id = $2', [tenantId, 'front']);
      const privatePem = fs.readFileSync(path.join(dataDir, 'device.key'), 'utf8');
      const spki = crypto.createPublicKey(privatePem).export({ type: 'spki', format: 'der' });
      assert.equal(row.rows[0]?.public_key, spki.subarray(spki.length - 32).toString('base64'));
      const claims = await held.pool.query<{ code_hash: Buffer }>('SELECT code_hash FROM hub_claims');
      assert.ok(claims.rows.every((c) => !c.code_hash.toString('utf8').includes(added.code)), 'only the hash of the code is kept');
      const config = parseYaml(fs.readFileSync(joined.config_file, 'utf8')) as { device_id: string; tenant_id: string; mqtt: { url: string; topic_prefix: string }; sync: { tenant_key_file: string }; remote_commands: { enabled: boolean; public_key: string } };
      assert.deepEqual([config.device_id, config.tenant_id, config.mqtt.url, config.mqtt.topic_prefix], ['front', tenantId, brokerUrl, prefix]);
      assert.equal(config.sync.tenant_key_file, joined.tenant_key_file);
      assert.deepEqual(config.remote_commands, { enabled: true, public_key: (await held.keys.commandKey(tenantId)).publicKey }, "the hub's command key: only commands it signs are accepted");
    } finally {
      await held.close();
    }
    for (const f of [joined.config_file, joined.tenant_key_file]) assert.equal(fs.statSync(f).mode & 0o777, 0o600, f);
    const env = { AUTHFACE_DATA_DIR: dataDir, AUTHFACE_DEVICE_CONFIG: joined.config_file };
    const doctor = await authface(['doctor'], env);
    assert.match(doctor.stdout, /✓ fleet/);
    // the quick start of this test is an anonymous broker: doctor says what that exposes
    assert.match(doctor.stdout, /! broker +connected to \S+ with no user: on a broker without per-device rights any client reads this tenant's log/);
    const served = await serve(env);
    door = served.child;
    doorUrl = served.url;
    const hubStatus = async () => JSON.parse((await hubCli(['status', '--tenant', tenantId])).stdout) as { head: number; devices: { device_id: string; state: string; lag: number }[] };
    let status = await hubStatus();
    for (let i = 0; i < 40 && !status.devices.some((d) => d.device_id === 'front' && d.state === 'online' && d.lag === 0); i++) {
      await new Promise((r) => setTimeout(r, 250));
      status = await hubStatus();
    }
    assert.deepEqual(status.devices.map((d) => [d.device_id, d.state, d.lag]), [['front', 'online', 0]], 'the door online and at the head of the log');
    // issue 20, the first hour, 8: a joined door holds its hub tenant only, no local "default" beside it
    const tenants = JSON.parse((await authface(['tenant', 'list'], env)).stdout) as { tenant_id: string }[];
    assert.deepEqual(tenants.map((t) => t.tenant_id), [tenantId]);
    assert.equal(fs.existsSync(path.join(dataDir, 'first-start-api-key')), false);
    // it took the tenant's origins from the log: a session redirecting there is accepted
    const { api_key } = JSON.parse((await authface(['key', 'create', '--tenant', tenantId], env)).stdout) as { api_key: string };
    const session = await fetch(`${served.url}/biometry/v1/identify`, { method: 'POST', headers: { authorization: `Bearer ${api_key}`, 'content-type': 'application/json' }, body: JSON.stringify({ client_state: crypto.randomUUID(), redirect_url: 'https://app.example.com/done' }) });
    assert.equal(session.status, 200);
  });

  it("a joined door without its own liveness follows the hub tenant's at its kiosk too, as the hub changes it (issue 20, the first hour, 1)", async function () {
    const dataDir = path.join(dir, 'front');
    const kioskDoor = async () => {
      const res = await fetch(`${doorUrl}/kiosk/v1/doors/main`, { headers: { [KIOSK_HEADER]: fs.readFileSync(path.join(dataDir, KIOSK_SECRET_FILE), 'utf8').trim() } });
      assert.equal(res.status, 200);
      return ((await res.json()) as { liveness: string }).liveness;
    };
    assert.equal(await kioskDoor(), 'active', 'the tenant was added active');
    await hubCli(['tenant', 'update', '--tenant', tenantId, '--liveness', 'passive']);
    await until(async () => (await kioskDoor()) === 'passive', 20_000, "the kiosk takes the hub tenant's passive liveness");
    await hubCli(['tenant', 'update', '--tenant', tenantId, '--liveness', 'active']);
    await until(async () => (await kioskDoor()) === 'active', 20_000, 'and active again');
  });

  it("the hub's API has a door unlock with a command signed by the tenant's key; a broker client's own command is ignored; another tenant cannot", async function () {
    const command = (key: string, body: Record<string, unknown>) =>
      fetch(`${hub!.url}/fleet/v1/command`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const unlocked = await command(hubKey, { device_id: 'front', door_id: 'main', command: 'unlock' });
    assert.equal(unlocked.status, 200);
    const outcome = (await unlocked.json()) as { answered: boolean; ok: boolean; request_id: string };
    assert.deepEqual([outcome.answered, outcome.ok], [true, true], JSON.stringify(outcome));
    // a client of the broker signs its own command with a key of its own: the door ignores it
    const { privatePem } = generateCommandKeys();
    const forged = signCommand(crypto.createPrivateKey(privatePem), { command: 'unlock', device: 'front', door: 'main', request_id: 'req_forged' });
    const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    await c.publishAsync(`${prefix}/front/command`, JSON.stringify(forged), { qos: 1 });
    await c.endAsync();
    // the door's remote openings, as the central store has them
    const store = await HubStore.open(db.url);
    try {
      const unlocks = async () => (await store.pool.query(`SELECT 1 FROM hub_access_events WHERE tenant_id = $1 AND type = 'remote_unlock'`, [tenantId])).rowCount;
      for (let i = 0; i < 40 && (await unlocks()) === 0; i++) await new Promise((r) => setTimeout(r, 250));
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(await unlocks(), 1, "one remote opening: the hub's");
    } finally {
      await store.close();
    }
    // another tenant's key does not reach this tenant's door; an unknown door is a clear 404
    const other = JSON.parse((await hubCli(['tenant', 'add', '--name', 'other'])).stdout) as { api_key: string };
    const foreign = await command(other.api_key, { device_id: 'front', door_id: 'main', command: 'unlock' });
    assert.equal(foreign.status, 404);
    assert.equal(((await foreign.json()) as { error: { code: string } }).error.code, 'device_not_found');
    assert.equal((await command(hubKey, { device_id: 'front', door_id: 'main', command: 'open_session' })).status, 400, 'open_session needs its biometry_url');
  });

  it('a code works once; an expired or unknown one is refused with a clear message; a joined name is not given twice', async function () {
    const added = await addDevice('back');
    const first = path.join(dir, 'back');
    await joinAs(first, added.code);
    await assert.rejects(joinAs(path.join(dir, 'thief'), added.code), refusal(/this code has already been used/));
    assert.equal(fs.existsSync(path.join(dir, 'thief', 'device.yaml')), false, 'nothing written');
    await assert.rejects(addDevice('back'), refusal(/device back has already joined/));
    const late = await addDevice('side');
    const store = await HubStore.open(db.url);
    await store.pool.query("UPDATE hub_claims SET expires_at = now() - interval '1 second' WHERE device_id = 'side'");
    await store.close();
    await assert.rejects(joinAs(path.join(dir, 'side'), late.code), refusal(/this code has expired/));
    await assert.rejects(joinAs(path.join(dir, 'side'), 'AAAA-BBBB-CCCC-DDDD'), refusal(/not one the hub gave/));
    // a new code for the same name replaces the one not used yet
    const again = await addDevice('side');
    await joinAs(path.join(dir, 'side'), again.code);
    await assert.rejects(authface(['join', '--hub', 'http://hub.example.com', '--code', again.code], { AUTHFACE_DATA_DIR: path.join(dir, 'x') }), refusal(/use https:\/\//));
  });
});
