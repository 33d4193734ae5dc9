import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { normalize } from '../src/biometrics/embedding.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { HubStore } from '../src/hub/store.ts';
import { openStore, type Store } from '../src/store/index.ts';
import { TenantKeyring } from '../src/sync/keyring.ts';
import {
  EnvelopeError,
  type TemplateBinding,
  authenticate,
  generateDeviceKeyPair,
  isAuthentic,
  newTenantKey,
  openTemplate,
  sealTemplate,
  unwrapTenantKey,
  wrapTenantKey,
} from '../src/sync/envelope.ts';
import { type Change, type ChangeBody, type SubmittedChange, type UserUpsert, type SyncReply, CHANGE_FIELDS_OUTSIDE_AUTH, changeBatchSchema, snapshotUserSchema } from '../src/sync/protocol.ts';
import { Replica } from '../src/sync/replica.ts';
import { DeviceSync } from '../src/sync/device-sync.ts';
import { createLogger } from '../src/core/logger.ts';
import { EventBus } from '../src/core/events.ts';
import { createTestDatabase, type TestDatabase } from './support/postgres.ts';
import { ROOT } from './support/datasets.ts';
import { protocolDocument } from '../src/sync/protocol-doc.ts';
import { userSetDigest } from '../src/sync/digest.ts';

/** The hub's key of a device whose broker is never reached (nothing it signs arrives). */
const unreachedHub = crypto.generateKeyPairSync('ed25519').publicKey;
const face = (seed: number) => normalize(Float32Array.from({ length: 128 }, (_, i) => Math.sin(seed * 12.9898 + i * 78.233)));

describe('sync protocol document', function () {
  it('firmware-config/sync-protocol.md is the one generated from the schemas (npm run docs:protocol)', function () {
    const file = fs.readFileSync(path.join(ROOT, 'firmware-config', 'sync-protocol.md'), 'utf8');
    assert.equal(file, protocolDocument());
    for (const topic of ['log', 'head', 'submit/<device_id>', 'fetch/<device_id>', 'snapshot/<device_id>', 'events/<device_id>', 'state/<device_id>', 'device/<device_id>']) assert.ok(file.includes(`/sync/<t>/${topic}\``), topic);
  });
});

describe('sync envelopes: templates sealed per tenant, tenant keys wrapped per device', function () {
  const tenantKey = newTenantKey();
  const binding: TemplateBinding = { tenantId: crypto.randomUUID(), externalUserId: 'alice', version: 3, model: FLEET_MODEL, keyVersion: 1 };

  it('opens only for its tenant key, user, version, model and key version', function () {
    const sealed = sealTemplate(tenantKey, face(1), binding);
    assert.deepEqual(openTemplate(tenantKey, sealed, binding, FLEET_MODEL), face(1));
    const refused = (b: Partial<TemplateBinding>, key = tenantKey, s = sealed) =>
      assert.throws(() => openTemplate(key, s, { ...binding, ...b }, FLEET_MODEL), (e: EnvelopeError) => e.code === 'tampered');
    refused({ externalUserId: 'mallory' });
    refused({ version: 4 });
    refused({ tenantId: crypto.randomUUID() });
    refused({ keyVersion: 2 });
    refused({}, newTenantKey()); // sealed with another tenant's key
    const bytes = Buffer.from(sealed.ciphertext, 'base64');
    bytes[10] ^= 1;
    refused({}, tenantKey, { ...sealed, ciphertext: bytes.toString('base64') });
  });

  it('refuses a template of a model this device does not run, before opening it', function () {
    const sealed = sealTemplate(tenantKey, face(1), { ...binding, model: 'other-model/v9' });
    assert.throws(() => openTemplate(tenantKey, sealed, { ...binding, model: 'other-model/v9' }, FLEET_MODEL), (e: EnvelopeError) => e.code === 'wrong_model');
  });

  it('a tenant key wrapped for one device opens with that device’s private key only', function () {
    const a = generateDeviceKeyPair();
    const b = generateDeviceKeyPair();
    const to = { tenantId: binding.tenantId, deviceId: 'door-a', keyVersion: 1 };
    const wrapped = wrapTenantKey(tenantKey, a.publicKey, to);
    assert.equal(wrapped.ciphertext.includes(tenantKey.toString('base64')), false);
    assert.deepEqual(unwrapTenantKey(wrapped, a.privateKeyPem, to), tenantKey);
    assert.throws(() => unwrapTenantKey(wrapped, b.privateKeyPem, to), (e: EnvelopeError) => e.code === 'wrong_key');
    assert.throws(() => unwrapTenantKey({ ...wrapped, deviceId: 'door-b' }, a.privateKeyPem, { ...to, deviceId: 'door-b' }), (e: EnvelopeError) => e.code === 'wrong_key', 'relabelled for another device');
    assert.throws(() => unwrapTenantKey(wrapped, a.privateKeyPem, { ...to, tenantId: crypto.randomUUID() }), (e: EnvelopeError) => e.code === 'wrong_key');
  });
});

describe('hub store (PostgreSQL): one sequence per tenant, in the transaction of the change', function () {
  this.timeout(60_000);
  let db: TestDatabase;
  let hub: HubStore;
  const tenantId = crypto.randomUUID();
  const key = newTenantKey();
  const masterKey = crypto.randomBytes(32);
  const upsert = (id: string, version: number): SubmittedChange => ({
    kind: 'user.upsert',
    external_user_id: id,
    version,
    model: FLEET_MODEL,
    key_version: 1,
    template: sealTemplate(key, face(version), { tenantId, externalUserId: id, version, model: FLEET_MODEL, keyVersion: 1 }),
  });

  before(async function () {
    db = await createTestDatabase();
    hub = await HubStore.open(db.url, { masterKey });
    // the tenant's settings are its first change
    const settings = await hub.createTenant(tenantId, 'acme');
    assert.deepEqual([settings.seq, settings.kind], [1, 'tenant.settings']);
  });
  after(async function () {
    await hub?.close();
    await db?.drop();
  });

  it("issue 21: the log's epoch is the database's system identifier and timeline, read on each connection", async function () {
    const r = await hub.pool.query<{ sys: string; wal: string }>('SELECT system_identifier::text AS sys, pg_walfile_name(pg_current_wal_lsn()) AS wal FROM pg_control_system()');
    assert.equal(hub.epoch, `${r.rows[0].sys}.${parseInt(r.rows[0].wal.slice(0, 8), 16)}`);
    // a connection that finds another epoch (a promoted standby) is announced once
    const heard: string[] = [];
    hub.onEpochChange((epoch, before) => heard.push(`${before} -> ${epoch}`));
    hub.sawEpoch(hub.epoch);
    hub.sawEpoch(`${r.rows[0].sys}.99`);
    hub.sawEpoch(`${r.rows[0].sys}.99`);
    assert.deepEqual(heard, [`${r.rows[0].sys}.${parseInt(r.rows[0].wal.slice(0, 8), 16)} -> ${r.rows[0].sys}.99`]);
  });

  it('two hub processes appending at once: 1..N, no number twice, none skipped', async function () {
    const other = await HubStore.open(db.url, { masterKey }); // a second hub on the same database (its own pool)
    try {
      const appends = Array.from({ length: 120 }, (_, i) => ((i % 2 ? hub : other) as HubStore).append(tenantId, upsert(`u${i}`, 1), { origin: i % 2 ? 'hub-a' : 'hub-b' }));
      const results = await Promise.all(appends);
      const seqs = results.map((r) => (r.status === 'sequenced' ? r.change.seq : -1)).sort((a, b) => a - b);
      assert.deepEqual(seqs, Array.from({ length: 120 }, (_, i) => i + 2));
      assert.equal(await other.headSeq(tenantId), 121);
    } finally {
      await other.close();
    }
  });

  it('a retried change_id is sequenced once; stale and post-deletion upserts are recorded as conflicts, never dropped silently', async function () {
    const changeId = crypto.randomUUID();
    const first = await hub.append(tenantId, upsert('alice', 1), { origin: 'door-1', changeId });
    const retry = await hub.append(tenantId, upsert('alice', 1), { origin: 'door-1', changeId });
    assert.equal(first.status, 'sequenced');
    assert.deepEqual(retry, { ...first, duplicate: true }, 'a retry gets the change it got the first time, marked as a retry');
    assert.equal((await hub.append(tenantId, upsert('alice', 1), { origin: 'door-2' })).status, 'conflict');
    const deleted = await hub.append(tenantId, { kind: 'user.delete', external_user_id: 'alice', version: 2 }, { origin: 'door-1' });
    assert.equal(deleted.status, 'sequenced');
    // an offline door's enrolment of the same person, made before it heard of the deletion
    assert.deepEqual(await hub.append(tenantId, upsert('alice', 2), { origin: 'door-2' }), { status: 'conflict', reason: 'deleted' });
    assert.deepEqual((await hub.conflicts(tenantId)).map((c) => [c.externalUserId, c.reason, c.origin]), [['alice', 'stale_version', 'door-2'], ['alice', 'deleted', 'door-2']]);
    assert.equal((await hub.append(tenantId, upsert('alice', 3), { origin: 'hub' })).status, 'sequenced', 'a new enrolment after the deletion');
  });

  it('changes after a cursor come back in order, a deleted person\'s earlier ones blanked, and validate against the published schema', async function () {
    const changes = await hub.changesAfter(tenantId, 119, 10);
    assert.deepEqual(changes.map((c) => c.seq), [120, 121, 122, 123, 124]);
    assert.deepEqual(
      changes.slice(2).map((c) => [c.kind, 'external_user_id' in c ? c.external_user_id : null, 'template' in c]),
      [['user.erased', null, false], ['user.delete', 'alice', false], ['user.upsert', 'alice', true]],
      'the template enrolled before the deletion is gone from the log; its sequence number stays',
    );
    assert.equal(changeBatchSchema.safeParse({ tenant_id: tenantId, changes }).success, true);
  });

  it("tenant settings and a person's groups are changes of the log; a deletion blanks the groups with the templates", async function () {
    assert.equal((await hub.append(tenantId, upsert('gina', 1), { origin: 'hub' })).status, 'sequenced');
    await assert.rejects(hub.changeGroup(tenantId, 'nobody', 'staff', true), /nobody is not enrolled/);
    const added = await hub.changeGroup(tenantId, 'gina', 'staff', true);
    assert.ok(added && added.kind === 'user.groups');
    assert.deepEqual([added.external_user_id, added.groups, added.seq], ['gina', ['staff'], (await hub.headSeq(tenantId))]);
    assert.equal(await hub.changeGroup(tenantId, 'gina', 'staff', true), null, 'already in it: nothing sequenced');
    await hub.changeGroup(tenantId, 'gina', 'night', true);
    assert.deepEqual(await hub.groupMembers(tenantId), [{ externalUserId: 'gina', groups: ['night', 'staff'] }]);
    const settings = await hub.updateTenantSettings(tenantId, { allowed_origins: ['https://app.example.com'] });
    assert.ok(settings.kind === 'tenant.settings');
    assert.deepEqual([settings.name, settings.allowed_origins, settings.liveness_mode], ['acme', ['https://app.example.com'], 'active'], 'what is not given stays');
    // the first chunk of a snapshot carries the tenant's settings and each person's groups
    const chunk = await hub.snapshotChunk(tenantId, null, 64);
    assert.deepEqual(chunk.tenant, { name: 'acme', allowed_origins: ['https://app.example.com'], liveness_mode: 'active' });
    assert.deepEqual(chunk.users.find((u) => u.external_user_id === 'gina')?.groups, ['night', 'staff']);
    assert.equal(chunk.users.find((u) => u.external_user_id === 'u1')?.groups, undefined, 'left out when none');
    assert.equal((await hub.snapshotChunk(tenantId, 'a', 64)).tenant, undefined, 'only with the first chunk');
    await hub.append(tenantId, { kind: 'user.delete', external_user_id: 'gina', version: 2 }, { origin: 'hub' });
    const log = await hub.changesAfter(tenantId, 0, 1000);
    assert.equal(log.filter((c) => c.kind === 'user.groups').length, 0, 'her group changes are blanked');
    // (MACs and ciphertexts left out: random base64 can spell anything)
    const readable = log.filter((c) => c.kind !== 'user.delete').map(({ auth: _auth, ...c }) => ({ ...c, template: undefined }));
    assert.equal(JSON.stringify(readable).includes('gina'), false, 'her id is nowhere but in the deletion');
    assert.deepEqual(await hub.groupMembers(tenantId), []);
    assert.equal(changeBatchSchema.safeParse({ tenant_id: tenantId, changes: log.slice(-50) }).success, true);
  });

  it('a snapshot chunk whose people carry many groups ends early, below the message limit', async function () {
    const other = crypto.randomUUID();
    await hub.createTenant(other, 'groups');
    const groups = Array.from({ length: 16 }, (_, i) => `group-with-a-rather-long-name-to-fill-the-chunk-${String(i).padStart(2, '0')}`);
    for (let i = 0; i < 64; i++) {
      const id = `p${String(i).padStart(2, '0')}`;
      const body = { ...upsert(id, 1), template: sealTemplate(key, face(i), { tenantId: other, externalUserId: id, version: 1, model: FLEET_MODEL, keyVersion: 1 }) };
      await hub.append(other, body, { origin: 'hub' });
      await hub.pool.query('UPDATE hub_users SET groups = $3 WHERE tenant_id = $1 AND external_user_id = $2', [other, id, JSON.stringify(groups)]);
    }
    const first = await hub.snapshotChunk(other, null, 64);
    assert.ok(first.users.length < 64 && first.users.length > 10, `${first.users.length} people`);
    assert.equal(first.next, first.users[first.users.length - 1].external_user_id, 'the next chunk starts after its last person');
    assert.ok(JSON.stringify({ type: 'snapshot', ...first }).length < 64 * 1024);
    let after: string | null = first.next;
    let people = first.users.length;
    while (after !== null) {
      const chunk = await hub.snapshotChunk(other, after, 64);
      people += chunk.users.length;
      after = chunk.next;
    }
    assert.equal(people, 64, 'every person, in chunks');
  });

  it('issue 21: a lost deletion sent again by two doors at once is sequenced once; one the hub does not need is not_lost', async function () {
    // a tenant of its own: the other tests count this one's changes
    const tenantId = crypto.randomUUID();
    await hub.createTenant(tenantId, 'lost-deletions');
    const upsert = (id: string, version: number): SubmittedChange => ({ kind: 'user.upsert', external_user_id: id, version, model: FLEET_MODEL, key_version: 1, template: sealTemplate(key, face(version), { tenantId, externalUserId: id, version, model: FLEET_MODEL, keyVersion: 1 }) });
    assert.equal((await hub.append(tenantId, upsert('lost', 1), { origin: 'door-1' })).status, 'sequenced');
    const deletion = { kind: 'user.delete' as const, external_user_id: 'lost', version: 2 };
    // both doors had applied it before the failover lost it; each sends it again under its own change_id
    const [a, b] = await Promise.all([hub.append(tenantId, deletion, { origin: 'door-1', lostDeletion: true }), hub.append(tenantId, deletion, { origin: 'door-2', lostDeletion: true })]);
    assert.deepEqual([a.status, b.status].sort(), ['not_lost', 'sequenced']);
    // a person the hub holds at that version or above (enrolled again since) is not deleted by it
    assert.equal((await hub.append(tenantId, upsert('again', 3), { origin: 'hub' })).status, 'sequenced');
    assert.deepEqual(await hub.append(tenantId, { kind: 'user.delete', external_user_id: 'again', version: 3 }, { origin: 'door-1', lostDeletion: true }), { status: 'not_lost' });
    assert.deepEqual(await hub.append(tenantId, { kind: 'user.delete', external_user_id: 'nobody', version: 2 }, { origin: 'door-1', lostDeletion: true }), { status: 'not_lost' });
  });

  it('every key of the hub starts with tenant_id (the Citus distribution column), but for the console\'s fleet-wide tables', async function () {
    const keys = await hub.pool.query<{ table_name: string; column_name: string }>(
      `SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc
       JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = tc.constraint_name AND kcu.ordinal_position = 1
       WHERE tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE') AND tc.table_name LIKE 'hub\\_%' AND tc.table_name <> 'hub_tenants'`,
    );
    assert.ok(keys.rows.length >= 4);
    // the console's admins and their sessions, and what a hub records of itself, span tenants: Citus reference tables (README, "Scaling out")
    const reference = ['hub_admins', 'hub_console_signins', 'hub_console_sessions', 'hub_settings'].sort();
    for (const k of keys.rows.filter((r) => !reference.includes(r.table_name))) assert.equal(k.column_name, 'tenant_id', `${k.table_name}`);
    assert.deepEqual([...new Set(keys.rows.filter((r) => r.column_name !== 'tenant_id').map((r) => r.table_name))].sort(), reference);
  });
});

describe('device replica (SQLite): strictly in order, cursor and data in one transaction', function () {
  let dir: string;
  let store: Store;
  let index: GalleryIndex;
  let replica: Replica;
  let tenantId: string;
  const key = newTenantKey();
  let seq = 0;
  /** A change as the hub sequences it: authenticated under the tenant key. */
  // as the hub makes it (hub/store.ts): the MAC leaves out CHANGE_FIELDS_OUTSIDE_AUTH
  const change = (body: ChangeBody, at = ++seq): Change =>
    authenticate({ key, keyVersion: 1 }, 'change', tenantId, { ...body, tenant_id: tenantId, seq: at, change_id: crypto.randomUUID(), origin: 'hub', committed_at: new Date().toISOString() }, CHANGE_FIELDS_OUTSIDE_AUTH);
  const chunk = (c: Omit<Extract<SyncReply, { type: 'snapshot' }>, 'auth' | 'type' | 'tenant_id'>) => authenticate({ key, keyVersion: 1 }, 'reply', tenantId, { type: 'snapshot' as const, tenant_id: tenantId, ...c });
  const upsert = (id: string, version: number, model: string = FLEET_MODEL): UserUpsert => ({
    kind: 'user.upsert',
    external_user_id: id,
    version,
    model,
    key_version: 1,
    template: sealTemplate(key, face(version * 100 + id.length), { tenantId, externalUserId: id, version, model, keyVersion: 1 }),
  });

  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-replica-'));
    store = openStore(dir, undefined);
    // the device knows its tenant by the same id as the hub
    tenantId = store.tenants.create({ name: 'acme', allowedOrigins: ['http://localhost'], livenessMode: 'passive' }).id;
    index = new GalleryIndex();
    replica = new Replica(store, index, (t) => (t === tenantId ? TenantKeyring.of(tenantId, key) : undefined), FLEET_MODEL);
    seq = 0;
  });
  afterEach(function () {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('applies in sequence order whatever the arrival order, and ignores duplicates', function () {
    const a = change(upsert('alice', 1));
    const b = change(upsert('bob', 1));
    const c = change(upsert('alice', 2));
    assert.deepEqual(replica.apply(tenantId, [c, a, b, a]), { applied: 3, duplicates: 1, gap: null, refused: null, cursor: 3 });
    assert.deepEqual(replica.apply(tenantId, [a, b, c]), { applied: 0, duplicates: 3, gap: null, refused: null, cursor: 3 });
    assert.equal(store.users.get(tenantId, 'alice')?.version, 2);
    assert.deepEqual(index.of(tenantId).gallery(FLEET_MODEL).best(face(200 + 5)), { externalUserId: 'alice', score: index.of(tenantId).gallery(FLEET_MODEL).best(face(205))?.score });
    assert.equal(index.of(tenantId).size, 2);
  });

  it('a gap stops the batch at the gap and names the range to fetch', function () {
    const first = change(upsert('alice', 1));
    seq = 4;
    const fifth = change(upsert('bob', 1));
    assert.deepEqual(replica.apply(tenantId, [first, fifth]), { applied: 1, duplicates: 0, gap: { from: 2, to: 4 }, refused: null, cursor: 1 });
    assert.equal(store.users.get(tenantId, 'bob'), undefined, 'nothing after the gap is applied');
  });

  it('a deletion erases the person here, templates and index entry', function () {
    replica.apply(tenantId, [change(upsert('alice', 1))]);
    replica.apply(tenantId, [change({ kind: 'user.delete', external_user_id: 'alice', version: 2 })]);
    assert.equal(store.users.get(tenantId, 'alice'), undefined);
    assert.equal(index.of(tenantId).size, 0);
    assert.equal((store.db.prepare('SELECT COUNT(*) AS n FROM templates').get() as { n: number }).n, 0);
    replica.apply(tenantId, [change(upsert('alice', 3))]);
    assert.equal(store.users.get(tenantId, 'alice')?.version, 3, 'enrolled again after the deletion');
  });

  it('a tampered envelope is refused and the cursor stays before it; a template of another model moves on and flags the person', function () {
    replica.apply(tenantId, [change(upsert('alice', 1))]);
    const bad = change(upsert('bob', 1));
    const bytes = Buffer.from((bad as { template: { ciphertext: string } }).template.ciphertext, 'base64');
    bytes[3] ^= 0xff;
    (bad as { template: { ciphertext: string } }).template.ciphertext = bytes.toString('base64');
    assert.equal(replica.apply(tenantId, [bad]).refused?.reason, 'unauthenticated', 'altered on the way: its MAC no longer fits');
    // a template that does not open although the hub authenticated the change (a door with the
    // tenant key sealed garbage): the envelope refuses it
    const result = replica.apply(tenantId, [authenticate({ key, keyVersion: 1 }, 'change', tenantId, bad, ['committed_at'])]);
    assert.deepEqual([result.refused, result.cursor], [{ seq: 2, reason: 'tampered' }, 1]);
    seq = 1;
    const foreign = change(upsert('alice', 2, 'other-model/v9'));
    assert.equal(replica.apply(tenantId, [foreign]).cursor, 2);
    assert.equal(store.users.get(tenantId, 'alice')?.needsReenrolment, true);
    assert.equal(index.of(tenantId).size, 0);
  });

  it('a change made here joins the outbox in its own transaction; a change from the hub never goes back', async function () {
    // a sync client whose broker is unreachable: it keeps its outbox and sends nothing
    const sync = DeviceSync.start(store, index, new EventBus(), { deviceId: 'door', tenantId, url: 'mqtt://127.0.0.1:1', prefix: 'authface', keyring: TenantKeyring.of(tenantId, key, 1), hubKey: unreachedHub, model: FLEET_MODEL, logger: createLogger('silent') });
    try {
      assert.throws(() => store.db.transaction(() => {
        store.users.enroll(tenantId, 'rolled-back', { [FLEET_MODEL]: face(1) });
        throw new Error('the enrolment fails after its insert');
      })());
      assert.equal(sync.pending(), 0, 'a rolled back enrolment leaves nothing to send');
      store.users.enroll(tenantId, 'carol', { [FLEET_MODEL]: face(2) });
      assert.equal(sync.pending(), 1);
      sync.replica.apply(tenantId, [change(upsert('dave', 1)), change({ kind: 'user.delete', external_user_id: 'carol', version: 2 })]);
      assert.equal(sync.pending(), 1, 'replicated changes are not sent back');
      store.users.enroll(tenantId, 'erin', { [FLEET_MODEL]: face(3) });
      store.eraseUser(tenantId, 'erin', () => null);
      const queued = store.db.prepare('SELECT external_user_id, kind, version FROM sync_outbox ORDER BY rowid').all();
      assert.deepEqual(queued, [
        { external_user_id: 'carol', kind: 'upsert', version: 1 },
        { external_user_id: 'erin', kind: 'upsert', version: 1 },
        { external_user_id: 'erin', kind: 'delete', version: 2 },
      ]);
    } finally {
      await sync.close();
    }
  });

  it('a snapshot in chunks, staged until the last: then users written at the hub\'s version, extras erased, a change still on its way kept, and the cursor at the first chunk\'s head', async function () {
    const user = (id: string, version: number) => snapshotUserSchema.parse(Object.fromEntries(Object.entries(upsert(id, version)).filter(([k]) => k !== 'kind')));
    // held here before: alice (older), stale (gone at the hub), mine (enrolled here, not yet acknowledged)
    replica.apply(tenantId, [change(upsert('alice', 1)), change(upsert('stale', 1))]);
    const sync = DeviceSync.start(store, index, new EventBus(), { deviceId: 'door', tenantId, url: 'mqtt://127.0.0.1:1', prefix: 'authface', keyring: TenantKeyring.of(tenantId, key, 1), hubKey: unreachedHub, model: FLEET_MODEL, logger: createLogger('silent') });
    try {
      store.users.enroll(tenantId, 'mine', { [FLEET_MODEL]: face(7) });
      index.of(tenantId).upsert('mine', { [FLEET_MODEL]: face(7) }); // as the session service does after an enrolment
      replica.beginSnapshot(tenantId);
      const first = chunk({ seq: 40, after: null, users: [user('alice', 3), user('bob', 1)], next: 'bob', more: true });
      assert.deepEqual(replica.stageSnapshotChunk(tenantId, first), { staged: 2, complete: false, ignored: false });
      assert.deepEqual(replica.stageSnapshotChunk(tenantId, first), { staged: 0, complete: false, ignored: true }, 'a duplicate of the first chunk');
      assert.deepEqual(replica.snapshot(tenantId), { snapshotSeq: 40, afterUser: 'bob', complete: false, epoch: null }, 'the progress, in the database');
      assert.equal(replica.cursor(tenantId), 2, 'the cursor waits for the last chunk');
      assert.equal(store.users.get(tenantId, 'alice')?.version, 1, 'nothing of a snapshot is applied before its last chunk');
      assert.equal(store.users.get(tenantId, 'bob'), undefined);
      assert.ok(index.of(tenantId).ids().includes('stale'), 'the door decides on what it held');
      const last = chunk({ seq: 41, after: 'bob', users: [user('carol', 2)], next: null, more: false });
      assert.deepEqual(replica.stageSnapshotChunk(tenantId, last), { staged: 1, complete: true, ignored: false });
      assert.equal(replica.stageSnapshotChunk(tenantId, first).ignored, true, 'a complete snapshot takes no chunk (the first chunk\'s `after` is null again)');
      assert.equal(store.users.get(tenantId, 'carol'), undefined, 'staged, not yet applied');
      assert.deepEqual(await replica.commitSnapshot(tenantId, { slice: 1 }), { applied: 3, removed: 1, lostDeletions: 0 });
      assert.equal(replica.cursor(tenantId), 40, 'the log resumes after the first chunk\'s head');
      assert.equal((store.db.prepare('SELECT COUNT(*) AS n FROM sync_snapshot_users').get() as { n: number }).n, 0, 'nothing staged is left');
      assert.equal(replica.snapshot(tenantId), undefined);
      const held = (store.db.prepare('SELECT external_user_id, version FROM users WHERE deleted_at IS NULL ORDER BY external_user_id').all() as { external_user_id: string; version: number }[]).map((u) => `${u.external_user_id}:${u.version}`);
      assert.deepEqual(held, ['alice:3', 'bob:1', 'carol:2', 'mine:1'], 'stale erased; mine kept for the hub');
      assert.equal(index.of(tenantId).size, 4);
      assert.equal(sync.pending(), 1, 'nothing of the snapshot goes back to the hub');
    } finally {
      await sync.close();
    }
  });

  it('issue 21: a batch with another change at the number this door applied last is not applied (the log was rewound): forked', function () {
    const a = change(upsert('alice', 1));
    const b = change(upsert('bob', 1));
    replica.apply(tenantId, [a, b]);
    assert.deepEqual(replica.position(tenantId), { seq: 2, changeId: b.change_id, epoch: null }, 'the place names the change applied there');
    // the same numbers given to other changes by a promoted standby
    const other = change(upsert('carol', 1), 2);
    const next = change(upsert('dave', 1), 3);
    const result = replica.apply(tenantId, [other, next]);
    assert.deepEqual([result.forked, result.applied, result.cursor], [true, 0, 2]);
    assert.equal(store.users.get(tenantId, 'dave'), undefined, 'nothing after the fork is applied');
    // a redelivery of the change it did apply is a plain duplicate
    assert.deepEqual(replica.apply(tenantId, [b]), { applied: 0, duplicates: 1, gap: null, refused: null, cursor: 2 });
  });

  it('issue 21: a snapshot of a log that lost a deletion does not bring the person back: the deletion joins the outbox again, marked lost', async function () {
    const user = (id: string, version: number) => snapshotUserSchema.parse(Object.fromEntries(Object.entries(upsert(id, version)).filter(([k]) => k !== 'kind')));
    replica.apply(tenantId, [change(upsert('alice', 1)), change(upsert('bob', 1)), change({ kind: 'user.delete', external_user_id: 'bob', version: 2 })]);
    assert.equal(store.users.get(tenantId, 'bob'), undefined);
    // the hub, rewound by a failover, holds bob at version 1 again (and alice)
    replica.beginSnapshot(tenantId);
    replica.stageSnapshotChunk(tenantId, chunk({ seq: 2, after: null, users: [user('alice', 1), user('bob', 1)], next: null, more: false, epoch: '7.2' }));
    assert.deepEqual(await replica.commitSnapshot(tenantId), { applied: 0, removed: 0, lostDeletions: 1 });
    assert.equal(store.users.get(tenantId, 'bob'), undefined, 'bob stays erased');
    assert.ok(!index.of(tenantId).ids().includes('bob'));
    assert.deepEqual(store.db.prepare('SELECT external_user_id, kind, version, lost FROM sync_outbox').all(), [{ external_user_id: 'bob', kind: 'delete', version: 2, lost: 1 }]);
    assert.deepEqual(replica.position(tenantId), { seq: 2, changeId: null, epoch: '7.2' }, "the snapshot's epoch is the one followed now");
    // a person the hub enrolled again since (a higher version) comes back as usual
    store.db.prepare('DELETE FROM sync_outbox').run(); // the hub acknowledged the deletion
    replica.beginSnapshot(tenantId);
    replica.stageSnapshotChunk(tenantId, chunk({ seq: 5, after: null, users: [user('alice', 1), user('bob', 3)], next: null, more: false }));
    assert.equal((await replica.commitSnapshot(tenantId)).lostDeletions, 0);
    assert.equal(store.users.get(tenantId, 'bob')?.version, 3);
  });

  it('while a snapshot loads, a deletion of the log is applied at once and a chunk read before it does not bring the person back', async function () {
    const user = (id: string, version: number) => snapshotUserSchema.parse(Object.fromEntries(Object.entries(upsert(id, version)).filter(([k]) => k !== 'kind')));
    replica.apply(tenantId, [change(upsert('alice', 1)), change(upsert('bob', 1))]);
    for (const id of ['alice', 'bob']) index.of(tenantId).upsert(id, { [FLEET_MODEL]: face(id.length) });
    replica.beginSnapshot(tenantId);
    // the first chunk was read at 40, before alice's deletion (41); the last one after it
    assert.equal(replica.stageSnapshotChunk(tenantId, chunk({ seq: 40, after: null, users: [user('alice', 1), user('bob', 1)], next: 'bob', more: false })).staged, 2);
    const deletion = change({ kind: 'user.delete', external_user_id: 'alice', version: 2 }, 41);
    assert.equal(replica.eraseDuringSnapshot(tenantId, [deletion, { ...change({ kind: 'user.delete', external_user_id: 'bob', version: 2 }, 42), auth: deletion.auth }]), 1, 'a forged deletion (the MAC of another) is not applied');
    assert.equal(store.users.get(tenantId, 'alice'), undefined, 'erased before the snapshot completes');
    assert.equal(index.of(tenantId).ids().includes('alice'), false, 'and not recognised');
    assert.equal(replica.cursor(tenantId), 2, 'the cursor waits for the snapshot (the log replays the deletion)');
    // a stale answer for the range of alice, read before the deletion: she stays out
    replica.restartSnapshot(tenantId);
    replica.eraseDuringSnapshot(tenantId, [deletion]);
    replica.stageSnapshotChunk(tenantId, chunk({ seq: 40, after: null, users: [user('alice', 1), user('bob', 1)], next: null, more: false }));
    await replica.commitSnapshot(tenantId);
    assert.equal(store.users.get(tenantId, 'alice'), undefined, 'the staged copy read before the deletion is not applied');
    assert.deepEqual(index.of(tenantId).ids(), ['bob']);
    assert.equal(replica.apply(tenantId, [deletion]).applied, 1, 'the log after the snapshot replays it, harmlessly');
  });

  it('at the head a snapshot announced, the door must hold the people of its digest: one that does not loads the snapshot again', async function () {
    const user = (id: string, version: number) => snapshotUserSchema.parse(Object.fromEntries(Object.entries(upsert(id, version)).filter(([k]) => k !== 'kind')));
    const load = async (digest: string) => {
      replica.beginSnapshot(tenantId);
      replica.stageSnapshotChunk(tenantId, chunk({ seq: 40, after: null, users: [user('alice', 1), user('bob', 1)], next: null, more: false, head: 42, digest }));
      await replica.commitSnapshot(tenantId);
      assert.equal(replica.cursor(tenantId), 40);
    };
    // the hub's people at 42: bob (alice deleted at 41) and carol (enrolled at 42)
    const atHead = userSetDigest([['bob', 1, []], ['carol', 1, []]]);
    const log = [change({ kind: 'user.delete', external_user_id: 'alice', version: 2 }, 41), change(upsert('carol', 1), 42), change(upsert('dave', 1), 43)];
    await load(atHead);
    const matched = replica.apply(tenantId, log);
    assert.equal(matched.snapshot, 'matched');
    assert.equal(matched.cursor, 43, 'the batch goes on past the head once it matched');
    // a snapshot that does not complete at the people the hub announced
    await load(userSetDigest([['bob', 1, []], ['mallory', 1, []]]));
    const differs = replica.apply(tenantId, log);
    assert.equal(differs.snapshot, 'differs');
    assert.equal(differs.cursor, 42, 'nothing after the head is applied: the door loads the snapshot again');
    assert.equal(replica.checkSnapshot(tenantId), undefined, 'checked once');
  });

  it("applies the hub's tenant settings and a person's groups; a deletion takes the groups with the person", function () {
    replica.apply(tenantId, [
      change({ kind: 'tenant.settings', name: 'acme-hq', allowed_origins: ['https://app.example.com'], liveness_mode: 'active' }),
      change(upsert('alice', 1)),
      change({ kind: 'user.groups', external_user_id: 'alice', groups: ['staff', 'night'] }),
    ]);
    assert.deepEqual(store.tenants.get(tenantId), { ...store.tenants.get(tenantId), name: 'acme-hq', allowedOrigins: ['https://app.example.com'], livenessMode: 'active' });
    assert.deepEqual(store.groups.of(tenantId, 'alice'), ['night', 'staff']);
    assert.equal(store.groups.isMember(tenantId, 'staff', 'alice'), true);
    const inGroups = store.users.digest(tenantId).digest;
    replica.apply(tenantId, [change({ kind: 'user.groups', external_user_id: 'alice', groups: ['night'] })]);
    assert.equal(store.groups.isMember(tenantId, 'staff', 'alice'), false, 'the list replaces the earlier one');
    assert.notEqual(store.users.digest(tenantId).digest, inGroups, 'the digest covers the groups: a copy that differs only in them is found');
    replica.apply(tenantId, [change({ kind: 'user.delete', external_user_id: 'alice', version: 2 })]);
    assert.deepEqual(store.groups.of(tenantId, 'alice'), []);
    assert.equal(replica.cursor(tenantId), 5);
  });

  it("a tenant's anti-spoofing floor from the hub's log is the tenant's here; the MAC leaves it out, so a door of an earlier release verifies the change without it", function () {
    const settings = { kind: 'tenant.settings' as const, name: 'acme', allowed_origins: [], liveness_mode: 'passive' as const };
    const strict = change({ ...settings, pad_threshold: 0.2 });
    assert.equal(replica.apply(tenantId, [strict]).applied, 1);
    assert.equal(store.tenants.get(tenantId)?.padThreshold, 0.2);
    const earlier = Object.fromEntries(Object.entries(strict).filter(([k]) => k !== 'pad_threshold')) as Change;
    assert.equal(isAuthentic(() => key, 'change', tenantId, earlier, ['committed_at', 'templates']), true, "as a door of an earlier release checks it, without the field it does not know");
    assert.equal(replica.apply(tenantId, [change(settings)]).applied, 1);
    assert.equal(store.tenants.get(tenantId)?.padThreshold, undefined, 'a change without it takes the tenant floor away');
  });

  it("a snapshot's first chunk sets the tenant's settings, and each person's groups", async function () {
    replica.apply(tenantId, [change(upsert('bob', 1)), change({ kind: 'user.groups', external_user_id: 'bob', groups: ['staff'] })]);
    replica.beginSnapshot(tenantId);
    const user = (id: string, groups?: string[]) => {
      const b = upsert(id, 1) as Extract<SubmittedChange, { kind: 'user.upsert' }>;
      const u = { external_user_id: b.external_user_id, version: b.version, model: b.model, key_version: b.key_version, template: b.template };
      return groups ? { ...u, groups } : u;
    };
    const tenant = { name: 'acme', allowed_origins: ['https://new.example.com'], liveness_mode: 'passive' as const };
    const done = replica.stageSnapshotChunk(tenantId, chunk({ seq: 9, after: null, users: [user('alice', ['night']), user('bob')], tenant, next: null, more: false }));
    assert.equal(done.complete, true);
    assert.deepEqual(store.tenants.get(tenantId)?.allowedOrigins, ['http://localhost'], 'the settings wait for the commit');
    await replica.commitSnapshot(tenantId);
    assert.deepEqual(store.tenants.get(tenantId)?.allowedOrigins, ['https://new.example.com']);
    assert.deepEqual(store.groups.of(tenantId, 'alice'), ['night']);
    assert.deepEqual(store.groups.of(tenantId, 'bob'), [], "bob's version was already here: his groups are still the hub's");
  });

  it('a change or snapshot chunk not authenticated by the tenant key is refused: forged, altered, or made with another key', function () {
    replica.apply(tenantId, [change(upsert('alice', 1))]);
    const forged = (c: Change) => replica.apply(tenantId, [c]);
    const deletion = change({ kind: 'user.delete', external_user_id: 'alice', version: 2 }, 2);
    assert.deepEqual(forged({ ...deletion, auth: authenticate({ key: newTenantKey(), keyVersion: 1 }, 'change', tenantId, deletion, ['committed_at']).auth }).refused, { seq: 2, reason: 'unauthenticated' }, "another tenant's key");
    const groups = change({ kind: 'user.groups', external_user_id: 'alice', groups: ['lobby'] }, 2);
    assert.equal(forged({ ...groups, groups: ['staff'] } as Change).refused?.reason, 'unauthenticated', 'altered after the MAC');
    assert.equal(forged({ ...groups, seq: 3 }).refused, null, 'a gap first: it waits for 2');
    assert.equal(forged({ ...groups, auth: { ...groups.auth, key_version: 2 } }).refused?.reason, 'unknown_key', 'a key version this device does not hold (it asks the hub for it)');
    assert.ok(store.users.get(tenantId, 'alice'), 'still here');
    assert.deepEqual(store.groups.of(tenantId, 'alice'), []);
    assert.equal(replica.cursor(tenantId), 1);
    assert.equal(forged(groups).applied, 1, 'the real change of that number is applied when it comes');
    assert.equal(isAuthentic(() => key, 'change', tenantId, groups, ['committed_at']), true);
    assert.equal(isAuthentic(() => key, 'reply', tenantId, groups, ['committed_at']), false, 'a MAC binds the kind of message');
    replica.beginSnapshot(tenantId);
    const empty = chunk({ seq: 9, after: null, users: [], next: null, more: false });
    assert.equal(replica.stageSnapshotChunk(tenantId, { ...empty, auth: { ...empty.auth, mac: authenticate({ key: newTenantKey(), keyVersion: 1 }, 'reply', tenantId, empty).auth.mac } }).ignored, true, 'a forged chunk would have erased everyone');
    assert.ok(store.users.get(tenantId, 'alice'));
  });

  it('after a rotation, a change from the new version on must be under it: the old key (a revoked device holds it) cannot forge one', function () {
    const newer = newTenantKey();
    // version 2 authenticates the log from seq 3 on; version 1 still opens what was sealed before
    const ring = new TenantKeyring(tenantId, [
      { key, keyVersion: 1, sinceSeq: 1 },
      { key: newer, keyVersion: 2, sinceSeq: 3 },
    ]);
    const rotated = new Replica(store, index, (t) => (t === tenantId ? ring : undefined), FLEET_MODEL);
    const under = (k: Buffer, v: number, body: ChangeBody, at: number): Change =>
      authenticate({ key: k, keyVersion: v }, 'change', tenantId, { ...body, tenant_id: tenantId, seq: at, change_id: crypto.randomUUID(), origin: 'hub', committed_at: new Date().toISOString() }, ['committed_at']);
    assert.equal(rotated.apply(tenantId, [under(key, 1, upsert('alice', 1), 1)]).applied, 1, 'before the rotation: version 1');
    assert.equal(rotated.apply(tenantId, [under(newer, 2, upsert('bob', 1), 2)]).applied, 1, 'a newer version is always accepted');
    const forgedDeletion = under(key, 1, { kind: 'user.delete', external_user_id: 'alice', version: 2 }, 3);
    assert.deepEqual(rotated.apply(tenantId, [forgedDeletion]).refused, { seq: 3, reason: 'unauthenticated' }, 'seq 3 under the old version: refused');
    assert.ok(store.users.get(tenantId, 'alice'), 'alice is still here');
    const sealedNew: SubmittedChange = {
      kind: 'user.upsert',
      external_user_id: 'carol',
      version: 1,
      model: FLEET_MODEL,
      key_version: 2,
      template: sealTemplate(newer, face(7), { tenantId, externalUserId: 'carol', version: 1, model: FLEET_MODEL, keyVersion: 2 }),
    };
    assert.equal(rotated.apply(tenantId, [under(newer, 2, sealedNew, 3)]).applied, 1, 'the real change under version 2');
    assert.throws(
      () => openTemplate(key, (sealedNew as Extract<SubmittedChange, { kind: 'user.upsert' }>).template, { tenantId, externalUserId: 'carol', version: 1, model: FLEET_MODEL, keyVersion: 2 }, FLEET_MODEL),
      EnvelopeError,
      'the old key does not open a template sealed after the rotation',
    );
    const ack = authenticate({ key, keyVersion: 1 }, 'reply', tenantId, { type: 'snapshot' as const, tenant_id: tenantId, seq: 3, after: null, users: [], next: null, more: false });
    assert.equal(isAuthentic(rotated.replyKey(tenantId), 'reply', tenantId, ack), false, 'a reply under the old version is refused once the new one is held');
  });

  it('a failure while applying rolls back the data and the cursor together (never "in sync" with users missing)', function () {
    replica.apply(tenantId, [change(upsert('alice', 1))]);
    const broken = new Replica(
      { ...store, users: Object.assign(Object.create(Object.getPrototypeOf(store.users)), store.users, { replicate: () => { throw new Error('disk full'); } }) },
      index,
      () => TenantKeyring.of(tenantId, key),
      FLEET_MODEL,
    );
    assert.throws(() => broken.apply(tenantId, [change({ kind: 'user.delete', external_user_id: 'alice', version: 2 }), change(upsert('bob', 1))]), /disk full/);
    assert.equal(replica.cursor(tenantId), 1);
    assert.ok(store.users.get(tenantId, 'alice'), 'the deletion in the same batch was rolled back too');
    assert.equal(index.of(tenantId).size, 1, 'the index was not touched');
  });
});
