import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GalleryIndex } from '../src/biometrics/gallery.ts';
import { DLIB_RESNET, MOBILEFACENET } from '../src/biometrics/matchers/index.ts';
import { HubStore } from '../src/hub/store.ts';
import { type Store, openStore } from '../src/store/index.ts';
import { isAuthentic, sealTemplate } from '../src/sync/envelope.ts';
import { TenantKeyring } from '../src/sync/keyring.ts';
import { type Change, type UserUpsert, MAX_CHUNK_BYTES, changeBatchSchema } from '../src/sync/protocol.ts';
import { Replica } from '../src/sync/replica.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';

/**
 * The further templates of an upsert (a person's MobileFaceNet template beside the dlib one): how
 * the hub sequences, keeps and serves them, and how a door applies them. Doors of the previous
 * release must get changes they accept and whose MAC verifies; that is checked here with the
 * previous release's own rule (`committed_at` the only field outside the MAC).
 */
describe('further templates: both models through the hub, and none for a door of the previous release', function () {
  this.timeout(60_000);
  let db: TestDatabase;
  let hub: HubStore;
  let tenantId: string;
  let key: Buffer;
  const unit = (dims: number, seed: number) => {
    const v = Float32Array.from({ length: dims }, (_, i) => Math.sin(seed * 7.1 + i * 0.37));
    const n = Math.hypot(...v);
    return v.map((x) => x / n);
  };
  const dlib = (id: string, version: number, seed: number) => sealTemplate(key, unit(128, seed), { tenantId, externalUserId: id, version, model: DLIB_RESNET.id, keyVersion: 1 });
  const mfn = (id: string, version: number, seed: number) => ({
    model: MOBILEFACENET.id,
    key_version: 1,
    template: sealTemplate(key, unit(512, seed), { tenantId, externalUserId: id, version, model: MOBILEFACENET.id, keyVersion: 1 }),
  });
  const upsert = (id: string, version: number, seed: number, further = true): UserUpsert => ({
    kind: 'user.upsert',
    external_user_id: id,
    version,
    model: DLIB_RESNET.id,
    key_version: 1,
    template: dlib(id, version, seed),
    ...(further ? { templates: [mfn(id, version, seed)] } : {}),
  });
  const range = async (after: number, models?: string[]) => JSON.parse((await hub.changesAfterJson(tenantId, after, 50, { models })).json) as Change[];

  before(async function () {
    db = await createTestDatabase();
    hub = await HubStore.open(db.url, { masterKey: crypto.randomBytes(32) });
    tenantId = crypto.randomUUID();
    await hub.createTenant(tenantId, 'acme');
    key = (await hub.keys.current(tenantId)).key;
  });
  after(async function () {
    await hub?.close();
    await db?.drop();
  });

  it('a door of the previous release gets the change without them, and its MAC still verifies by its own rule; a door of this release gets them', async function () {
    const sequenced = await hub.append(tenantId, upsert('alice', 1, 1), { origin: 'door' });
    assert.equal(sequenced.status, 'sequenced');
    const old = (await range(0)).find((c) => c.kind === 'user.upsert')!;
    assert.equal('templates' in old, false, 'left out when no models are named');
    assert.ok(changeBatchSchema.safeParse({ tenant_id: tenantId, changes: [old] }).success);
    assert.ok(isAuthentic(() => key, 'change', tenantId, old, ['committed_at']), "the previous release's MAC check passes");
    const current = (await range(0, [DLIB_RESNET.id, MOBILEFACENET.id])).find((c) => c.kind === 'user.upsert')!;
    assert.deepEqual((current as UserUpsert).templates?.map((t) => t.model), [MOBILEFACENET.id]);
    assert.equal(isAuthentic(() => key, 'change', tenantId, current, ['committed_at']), false, 'the further templates are outside the MAC');
    const chunk = await hub.snapshotChunk(tenantId, null, 64);
    assert.equal(chunk.users[0].templates, undefined, 'a snapshot for the previous release carries none either');
    assert.deepEqual((await hub.snapshotChunk(tenantId, null, 64, { models: [MOBILEFACENET.id] })).users[0].templates?.map((t) => t.model), [MOBILEFACENET.id]);
  });

  it("a door's user.templates becomes an upsert at the same version with the hub's own first template; at a version the hub has moved past, nothing is sequenced", async function () {
    assert.equal((await hub.append(tenantId, upsert('bob', 1, 2, false), { origin: 'old-door' })).status, 'sequenced');
    const before = (await hub.snapshotChunk(tenantId, 'alice', 64, { models: [MOBILEFACENET.id] })).users.find((u) => u.external_user_id === 'bob')!;
    assert.equal(before.templates, undefined);
    const added = await hub.append(tenantId, { kind: 'user.templates', external_user_id: 'bob', version: 1, templates: [mfn('bob', 1, 3)] }, { origin: 'new-door' });
    assert.equal(added.status, 'sequenced');
    const change = (added as { change: Change }).change as Change & UserUpsert;
    assert.deepEqual([change.kind, change.version, change.template], ['user.upsert', 1, before.template], "bob's dlib template as the hub had it");
    assert.deepEqual(change.templates?.map((t) => t.model), [MOBILEFACENET.id]);
    assert.equal((await hub.append(tenantId, upsert('bob', 2, 4, false), { origin: 'old-door' })).status, 'sequenced');
    const held = (await hub.snapshotChunk(tenantId, 'alice', 64, { models: [MOBILEFACENET.id] })).users.find((u) => u.external_user_id === 'bob')!;
    assert.deepEqual([held.version, held.templates], [2, undefined], "an update of the old door drops the new template of bob's earlier face");
    const late = await hub.append(tenantId, { kind: 'user.templates', external_user_id: 'bob', version: 1, templates: [mfn('bob', 1, 3)] }, { origin: 'new-door' });
    assert.deepEqual(late, { status: 'conflict', reason: 'stale_version' });
    assert.deepEqual(await hub.conflicts(tenantId), [], 'nothing for an admin to resolve');
  });

  it('a range with further templates ends before MAX_CHUNK_BYTES, and says there is more', async function () {
    const from = await hub.headSeq(tenantId);
    for (let i = 0; i < 40; i++) assert.equal((await hub.append(tenantId, upsert(`p${i}`, 1, 10 + i), { origin: 'door' })).status, 'sequenced');
    const page = await hub.changesAfterJson(tenantId, from, 50, { models: [MOBILEFACENET.id] });
    assert.ok(page.count > 1 && page.count < 40, `${page.count} changes in one range`);
    assert.ok(Buffer.byteLength(page.json) <= MAX_CHUNK_BYTES, `${page.json.length} bytes`);
    assert.equal((await hub.changesAfterJson(tenantId, from, 50)).count, 40, 'without them all forty fit');
  });

  describe('at a door of this release', function () {
    let dir: string;
    let store: Store;
    let replica: Replica;
    beforeEach(function () {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-further-'));
      store = openStore(dir, undefined);
      store.tenants.create({ id: tenantId, name: 'acme', allowedOrigins: ['http://localhost'], livenessMode: 'passive' });
      replica = new Replica(store, new GalleryIndex(), (t) => (t === tenantId ? TenantKeyring.of(tenantId, key) : undefined), DLIB_RESNET.id);
    });
    afterEach(function () {
      store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('applies both templates; a further template that does not open is left out and the change still applies', async function () {
      const changes = await range(0, [DLIB_RESNET.id, MOBILEFACENET.id]);
      const alice = changes.find((c) => c.kind === 'user.upsert' && c.external_user_id === 'alice') as Change & UserUpsert;
      const garbled = { ...alice, templates: [mfn('mallory', 1, 9)] }; // sealed for someone else
      const result = replica.apply(tenantId, changes.map((c) => (c === alice ? garbled : c)));
      assert.equal(result.refused, null);
      const models = (who: string) => Object.keys(store.users.templates(store.users.get(tenantId, who)!)).sort();
      assert.deepEqual(models('alice'), [DLIB_RESNET.id], "mallory's template is not alice's");
      assert.deepEqual(models('p0'), [DLIB_RESNET.id, MOBILEFACENET.id].sort());
    });
  });
});
