import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { DLIB_RESNET, MOBILEFACENET } from '../src/biometrics/matchers/index.ts';
import { authface, cliIn, joinDoorByCli, run, serve, serveHub, stop } from './support/cli.ts';
import { Client } from './support/client.ts';
import { requireShared, shared } from './support/datasets.ts';
import { testBroker } from './support/mqtt.ts';
import { thrice } from './support/photos.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';
import { previousRelease } from './support/previous-release.ts';
import { loadDeviceKey, loadSigningKey } from '../src/sync/device-key.ts';
import { signMessage } from '../src/sync/signature.ts';
import { challengeSchema, proveRegistration } from '../src/sync/signing-registration.ts';
import { authenticate, generateDeviceKeyPair } from '../src/sync/envelope.ts';
import { loadKeyring } from '../src/sync/keyring.ts';
import { syncTopics } from '../src/sync/protocol.ts';
import mqtt from 'mqtt';

/**
 * A fleet in the middle of its upgrade: the hub and the `new` door run this release, the `old` door
 * the previous one (its sources from this repository's history), all in one tenant. The old door
 * takes dlib templates only, and must never see the MobileFaceNet ones; the new doors carry both
 * through the hub, and a door that joins later gets both from its snapshot without any capture.
 */
describe('a fleet while it upgrades: a door of the previous release and doors of this one in one tenant', function () {
  requireShared(this);
  this.timeout(600_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-fleet-upgrade-'));
  const prefix = `authface-upgrade-${process.pid}`;
  const hubEnv = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex') };
  const crop = (who: string, k: number) => fs.readFileSync(shared('bbt', who, `${k}.png`));
  let release: string;
  let db: TestDatabase;
  let pool: pg.Pool;
  let hub: (ChildProcess & { url: string }) | undefined;
  let brokerUrl: string;
  let tenantId: string;
  const doors = new Map<string, { child: ChildProcess; api: Client; dataDir: string; env: Record<string, string> }>();

  async function startDoor(name: string, cli: string[]): Promise<void> {
    const dataDir = path.join(dir, name);
    const { env, configFile } = await joinDoorByCli(name, { dir, tenantId, databaseUrl: db.url, hubEnv, brokerUrl, prefix }, cli);
    const served = await serve({ ...env, AUTHFACE_DEVICE_CONFIG: configFile }, { cli });
    const { api_key } = JSON.parse((await authface(['key', 'create', '--tenant', tenantId], env, { cli })).stdout) as { api_key: string };
    doors.set(name, { child: served.child, api: new Client(served.url, api_key), dataDir, env: { ...env, AUTHFACE_DEVICE_CONFIG: configFile } });
  }

  const door = (name: string) => doors.get(name)!;
  /** The models of a person's active templates at a door (read from its database; the model column is not secret). */
  const modelsAt = (name: string, who: string): string[] => {
    const sqlite = new Database(path.join(door(name).dataDir, 'authface.db'), { readonly: true, fileMustExist: true });
    try {
      const rows = sqlite.prepare('SELECT t.model FROM templates t JOIN users u ON u.id = t.user_id WHERE u.external_user_id = ? AND u.deleted_at IS NULL AND t.active = 1 ORDER BY t.model').all(who) as { model: string }[];
      return rows.map((r) => r.model);
    } finally {
      sqlite.close();
    }
  };
  const flaggedAt = (name: string): number => {
    const sqlite = new Database(path.join(door(name).dataDir, 'authface.db'), { readonly: true, fileMustExist: true });
    try {
      return (sqlite.prepare('SELECT COUNT(*) AS n FROM users WHERE reenrolment_reason IS NOT NULL').get() as { n: number }).n;
    } finally {
      sqlite.close();
    }
  };
  const atHub = async (who: string) =>
    (await pool.query<{ version: number; model: string; templates: { model: string }[] }>('SELECT version, model, templates FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2 AND NOT deleted', [tenantId, who])).rows[0];
  async function until<T>(what: string, check: () => Promise<T | undefined> | T | undefined, tries = 120): Promise<T> {
    for (let i = 0; i < tries; i++) {
      const value = await check();
      if (value !== undefined && value !== false) return value;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`timed out waiting for: ${what}`);
  }
  const identify = async (name: string, photo: Buffer) => (await door(name).api.run('identify', thrice(photo))).result;
  const identifiedAs = (name: string, photo: Buffer, who: string) =>
    until(`${who} identified at ${name}`, async () => {
      const result = await identify(name, photo);
      return result.status === 'success' && result.external_user_id === who ? result : undefined;
    }, 60);
  const both = [DLIB_RESNET.id, MOBILEFACENET.id].sort();

  before(async function () {
    release = previousRelease();
    brokerUrl = (await testBroker()).url;
    db = await createTestDatabase();
    pool = new pg.Pool({ connectionString: db.url, max: 2 });
    const added = (await authface(['hub', 'tenant', 'add', '--name', 'acme', '--allowed-origin', 'https://app.example.com', '--liveness', 'passive', '--database-url', db.url], hubEnv)).stdout;
    tenantId = (JSON.parse(added) as { tenant_id: string }).tenant_id;
    hub = await serveHub({ databaseUrl: db.url, brokerUrl, prefix }, hubEnv);
    await startDoor('old', cliIn(release));
    await startDoor('new', cliIn(path.resolve('.')));
  });
  after(async function () {
    for (const d of doors.values()) if (d.child.exitCode === null && d.child.signalCode === null) await stop(d.child);
    if (hub) await stop(hub);
    await pool?.end();
    await db?.drop();
    for (const d of [dir, release]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  it('enrolled at the old door: identified at the new one, which makes the new template and shares it through the hub; the old door never takes it', async function () {
    assert.equal((await door('old').api.run('enroll', thrice(crop('amy', 1)), { externalUserId: 'amy' })).result.status, 'success');
    await until('amy at the new door', () => modelsAt('new', 'amy').length > 0 || undefined);
    assert.deepEqual(modelsAt('new', 'amy'), [DLIB_RESNET.id], 'the old door made a dlib template only');
    const first = await identifiedAs('new', crop('amy', 2), 'amy');
    assert.ok((first.score as number) >= DLIB_RESNET.matchThreshold, `decided by dlib (${first.score})`);
    assert.deepEqual(modelsAt('new', 'amy'), both, 'the capture gave amy the new template at the new door');
    const held = await until('the hub holds amy\'s new template', async () => ((await atHub('amy'))?.templates.length ? atHub('amy') : undefined));
    assert.deepEqual([held.version, held.model, held.templates.map((t: { model: string }) => t.model)], [1, DLIB_RESNET.id, [MOBILEFACENET.id]], 'at the same version, beside the dlib one');
    // the hub sequenced it as an upsert at version 1: the old door applied it again and holds what it held
    const head = Number((await pool.query<{ seq: string }>('SELECT next_seq - 1 AS seq FROM hub_tenants WHERE tenant_id = $1', [tenantId])).rows[0].seq);
    await until('both doors at the head', async () => {
      const rows = (await pool.query<{ device_id: string; applied_seq: string; diverged: boolean }>('SELECT device_id, applied_seq, diverged FROM hub_devices WHERE tenant_id = $1', [tenantId])).rows;
      return rows.length === 2 && rows.every((r: { applied_seq: string; diverged: boolean }) => Number(r.applied_seq) >= head && !r.diverged) ? true : undefined;
    });
    assert.deepEqual(modelsAt('old', 'amy'), [DLIB_RESNET.id]);
    assert.equal(flaggedAt('old'), 0, 'nobody at the old door is flagged to enrol again');
    await identifiedAs('old', crop('amy', 3), 'amy');
  });

  it('enrolled at the new door: the hub keeps both templates, the old door identifies by dlib; a door that joins later gets both from its snapshot', async function () {
    assert.equal((await door('new').api.run('enroll', thrice(crop('howard', 1)), { externalUserId: 'howard' })).result.status, 'success');
    assert.deepEqual(modelsAt('new', 'howard'), both);
    const held = await until('howard at the hub', () => atHub('howard'));
    assert.deepEqual(held.templates.map((t: { model: string }) => t.model), [MOBILEFACENET.id]);
    await identifiedAs('old', crop('howard', 2), 'howard');
    assert.deepEqual(modelsAt('old', 'howard'), [DLIB_RESNET.id]);
    assert.equal(flaggedAt('old'), 0);

    await startDoor('late', cliIn(path.resolve('.')));
    for (const who of ['amy', 'howard']) await until(`${who} at the late door`, () => (modelsAt('late', who).length === 2 ? true : undefined));
    for (const who of ['amy', 'howard']) {
      const result = await identifiedAs('late', crop(who, 4), who);
      assert.ok((result.score as number) < DLIB_RESNET.matchThreshold, `${who} decided by MobileFaceNet at once, from the snapshot's template (${result.score})`);
    }
  });

  it('updated at the old door: the new doors drop the template of the earlier face and make one again; deleted at the old door: gone everywhere, the hub too', async function () {
    assert.equal((await door('old').api.run('update_embedding', thrice(crop('amy', 5)), { externalUserId: 'amy' })).result.status, 'success');
    await until('amy v2 at the new door', () => (modelsAt('new', 'amy').length === 1 ? true : undefined));
    assert.deepEqual(modelsAt('new', 'amy'), [DLIB_RESNET.id], "the MobileFaceNet template of amy's earlier face is not kept with her new one");
    assert.deepEqual((await atHub('amy')).templates, []);
    const result = await identifiedAs('new', crop('amy', 2), 'amy');
    assert.ok((result.score as number) >= DLIB_RESNET.matchThreshold, `decided by dlib again (${result.score})`);
    const held = await until('amy v2 with the new template at the hub', async () => ((await atHub('amy')).templates.length === 1 ? atHub('amy') : undefined));
    assert.equal(held.version, 2);
    await until('the late door has it', () => (modelsAt('late', 'amy').length === 2 ? true : undefined));

    assert.equal((await door('old').api.post('/biometry/v1/delete-user', { external_user_id: 'howard' })).status, 200);
    for (const name of ['new', 'late']) await until(`howard gone at ${name}`, async () => ((await door(name).api.post('/biometry/v1/get-user', { external_user_id: 'howard' })).status === 404 ? true : undefined));
    const row = (await pool.query<{ deleted: boolean; template: unknown; templates: unknown[] }>('SELECT deleted, template, templates FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2', [tenantId, 'howard'])).rows[0];
    assert.deepEqual([row.deleted, row.template, row.templates], [true, null, []]);
    const left = await pool.query(`SELECT 1 FROM hub_changes WHERE tenant_id = $1 AND external_user_id = 'howard' AND kind = 'user.upsert'`, [tenantId]);
    assert.equal(left.rowCount, 0, "no change of the log holds any of howard's templates");
    for (const name of ['new', 'late']) assert.deepEqual(modelsAt(name, 'howard'), []);
    assert.equal(flaggedAt('old'), 0);
    // the fleet checks duplicates with dlib's templates, and the old door decides by them: a door keeps them
    await assert.rejects(authface(['templates', 'retire', '--tenant', tenantId], { AUTHFACE_DATA_DIR: door('new').dataDir }), (err: { stderr: string }) => /is a fleet tenant/.test(err.stderr));
    assert.deepEqual(modelsAt('new', 'amy'), [DLIB_RESNET.id, MOBILEFACENET.id].sort());
  });

  it("a tenant's anti-spoofing floor set at the hub: the door of this release takes it; the door of the earlier release, which has no such network, goes on applying the log", async function () {
    const tenantAt = (name: string) => {
      const sqlite = new Database(path.join(door(name).dataDir, 'authface.db'), { readonly: true, fileMustExist: true });
      try {
        const columns = (sqlite.prepare('PRAGMA table_info(tenants)').all() as { name: string }[]).map((c) => c.name);
        return sqlite.prepare(`SELECT name${columns.includes('pad_threshold') ? ', pad_threshold' : ''} FROM tenants WHERE id = ?`).get(tenantId) as { name: string; pad_threshold?: number | null };
      } finally {
        sqlite.close();
      }
    };
    const update = (...args: string[]) => authface(['hub', 'tenant', 'update', '--tenant', tenantId, ...args, '--database-url', db.url], hubEnv);
    await update('--pad-threshold', '0.2');
    await until('the floor at the new door', () => (tenantAt('new').pad_threshold === 0.2 ? true : undefined));
    // a later change of the log reaches the old door: the one with the floor did not stop it
    await update('--name', 'acme-renamed');
    await until('the old door applies the log after it', () => (tenantAt('old').name === 'acme-renamed' ? true : undefined));
    assert.equal(tenantAt('old').pad_threshold, undefined, 'the earlier release has no such setting');
    assert.equal(tenantAt('new').pad_threshold, 0.2, 'a later change keeps the floor');
    await update('--pad-threshold', 'default');
    await until('the floor taken away at the new door', () => (tenantAt('new').pad_threshold === null ? true : undefined));
  });

  it("issue 20: a PIN set at the hub: the door of this release holds it; the door of the earlier release, which cannot read a PIN change, goes on applying the log", async function () {
    const pinsAt = (name: string): string[] => {
      const sqlite = new Database(path.join(door(name).dataDir, 'authface.db'), { readonly: true, fileMustExist: true });
      try {
        return (sqlite.prepare('SELECT external_user_id FROM user_pins ORDER BY external_user_id').all() as { external_user_id: string }[]).map((r) => r.external_user_id);
      } finally {
        sqlite.close();
      }
    };
    const cli = run(process.execPath, [...cliIn(path.resolve('.')), 'hub', 'pin', 'set', '--tenant', tenantId, '--user', 'amy', '--database-url', db.url], { env: { ...process.env, LOG_LEVEL: 'warn', ...hubEnv } });
    cli.child.stdin?.end('582914\n');
    assert.equal((JSON.parse((await cli).stdout) as { pin: string }).pin, 'set');
    await until('amy has a PIN at the new door', () => (pinsAt('new').includes('amy') ? true : undefined));
    // the PIN change reached the old door as user.erased: a later change still follows it
    await authface(['hub', 'tenant', 'update', '--tenant', tenantId, '--name', 'acme-after-pin', '--database-url', db.url], hubEnv);
    const nameAt = (name: string) => {
      const sqlite = new Database(path.join(door(name).dataDir, 'authface.db'), { readonly: true, fileMustExist: true });
      try {
        return (sqlite.prepare('SELECT name FROM tenants WHERE id = ?').get(tenantId) as { name: string }).name;
      } finally {
        sqlite.close();
      }
    };
    await until('the old door applies the log after the PIN change', () => (nameAt('old') === 'acme-after-pin' ? true : undefined));
    assert.deepEqual(pinsAt('old'), [], 'the earlier release holds no fleet PIN');
  });

  it('upgraded in place, the old door registers its signing key itself, proving its device key; nobody else can register one in its name', async function () {
    const oldDir = door('old').dataDir;
    const keyAtHub = async () => (await pool.query<{ signing_key: string | null }>('SELECT signing_key FROM hub_devices WHERE tenant_id = $1 AND device_id = $2', [tenantId, 'old'])).rows[0]?.signing_key;
    assert.equal(await keyAtHub(), null, 'a door of the earlier release registered no signing key: it is heard on the tenant key alone');
    const post = async (route: string, body: object) => {
      const res = await fetch(`${hub!.url}/fleet/v1/${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    // anyone may ask for a challenge, for any name (the answers look alike), but a proof needs the door's device key
    const attacker = crypto.generateKeyPairSync('ed25519');
    const request = { tenant_id: tenantId, device_id: 'old', signing_key: Buffer.from(attacker.publicKey.export({ format: 'jwk' }).x as string, 'base64url').toString('base64') };
    const asked = await post('signing-key/challenge', request);
    assert.equal(asked.status, 200);
    assert.deepEqual(Object.keys((await post('signing-key/challenge', { ...request, device_id: 'nobody' })).body).sort(), Object.keys(asked.body).sort());
    const challenge = challengeSchema.parse({ challenge: asked.body.challenge, expires_at: asked.body.expires_at });
    const withProof = (devicePrivateKeyPem: string, signer: crypto.KeyObject) =>
      post('signing-key', signMessage(signer, 'signing-key', tenantId, { ...request, ...challenge, proof: proveRegistration(devicePrivateKeyPem, { ...request, ...challenge }) }));
    const forged = await withProof(generateDeviceKeyPair().privateKeyPem, attacker.privateKey);
    assert.equal(forged.status, 404, 'registered on a proof made with another device key');
    // the door's own proof (read from its disk) but signed by a key other than the one registered
    const realProof = await withProof(loadDeviceKey(oldDir).privateKeyPem, crypto.generateKeyPairSync('ed25519').privateKey);
    assert.deepEqual(realProof, forged, 'refused alike');
    assert.equal(await keyAtHub(), null);
    // the same data and configuration, this release's code: it signs, and registers the key it signs with
    await stop(door('old').child);
    const { env } = door('old');
    // the hub's address, as `authface join` writes it (this test set the door up by hand, with wrap-key)
    const config = parseYaml(fs.readFileSync(env.AUTHFACE_DEVICE_CONFIG, 'utf8')) as { sync: Record<string, string> };
    fs.writeFileSync(env.AUTHFACE_DEVICE_CONFIG, stringifyYaml({ ...config, sync: { ...config.sync, hub_url: hub!.url } }));
    const served = await serve(env, { cli: cliIn(path.resolve('.')) });
    doors.set('old', { ...door('old'), child: served.child });
    const own = loadSigningKey(oldDir).publicKey;
    await until('the upgraded door registers its signing key', async () => ((await keyAtHub()) === own ? true : undefined));
    // the hub now takes what is said in its name only signed by it: a state made with the tenant
    // key alone (all an earlier release needed; every door of the tenant holds it) is refused
    const recorded = async () => (await pool.query<{ applied_seq: string; version: string | null }>('SELECT applied_seq, version FROM hub_devices WHERE tenant_id = $1 AND device_id = $2', [tenantId, 'old'])).rows[0];
    await until('the upgraded door reports its signed state', async () => ((await recorded()).version !== null ? true : undefined));
    await new Promise((r) => setTimeout(r, 1500)); // the hub's list of senders is read again (at most 1 s old)
    const keyring = loadKeyring(config.sync.tenant_key_file, oldDir, { tenantId, deviceId: 'old' });
    const forgedState = authenticate(keyring.latest, 'state', tenantId, { device_id: 'old', tenant_id: tenantId, state: 'online' as const, applied_seq: 999_999 });
    const client = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    try {
      await client.publishAsync(syncTopics(prefix, tenantId).state('old'), JSON.stringify(forgedState), { qos: 1 });
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      await client.endAsync();
    }
    assert.notEqual(Number((await recorded()).applied_seq), 999_999, 'the hub took a state in the door\'s name made with the tenant key alone');
  });
});
