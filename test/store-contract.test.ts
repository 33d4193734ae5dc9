import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { normalize } from '../src/biometrics/embedding.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { postgresBiometryStore } from '../src/hub/biometry-store.ts';
import { HubStore } from '../src/hub/store.ts';
import type { AuditInput, BiometryStore } from '../src/store/biometry-store.ts';
import { openStore } from '../src/store/index.ts';
import type { Session, SessionOutcome } from '../src/store/sessions.ts';
import { sqliteBiometryStore } from '../src/store/sqlite-biometry.ts';
import type { Change } from '../src/sync/protocol.ts';
import { createTestDatabase } from './support/postgres.ts';

/**
 * One contract, two stores: what the /biometry/v1 API relies on holds for SQLite on a device and
 * for PostgreSQL at the hub alike. Each implementation runs every case below on a fresh store.
 */
interface Harness {
  store: BiometryStore;
  /**
   * Every byte the store holds, as text, to look for what must not be there. The hub's log keeps a
   * deletion's own change and its tombstone (version only) under the person's id: doors need them
   * to apply it, and a stale change from a door must meet them. Those two rows are left out here
   * and checked to be all there is.
   */
  dump(): Promise<string>;
  close(): Promise<void>;
}

const MASTER_KEY = crypto.randomBytes(32).toString('hex');
const face = (seed: number) => normalize(Float32Array.from({ length: 128 }, (_, i) => Math.sin(seed * 12.9898 + i * 78.233)));

const implementations: { name: string; open(): Promise<Harness> }[] = [
  {
    name: 'SQLite (device)',
    async open() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-contract-'));
      const store = openStore(dir, MASTER_KEY);
      return {
        store: sqliteBiometryStore(store),
        async dump() {
          store.db.pragma('wal_checkpoint(TRUNCATE)');
          return fs.readdirSync(dir).map((f) => fs.readFileSync(path.join(dir, f)).toString('latin1')).join('\n');
        },
        async close() {
          store.close();
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  },
  {
    name: 'PostgreSQL (hub)',
    async open() {
      const db = await createTestDatabase();
      const hub = await HubStore.open(db.url, { masterKey: Buffer.from(MASTER_KEY, 'hex') });
      const sequenced: Change[] = [];
      const store = postgresBiometryStore(hub, { model: FLEET_MODEL, onSequenced: (c) => sequenced.push(c) });
      return {
        store,
        async dump() {
          const tables = await hub.pool.query<{ table_name: string }>(`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`);
          const rows = [];
          const except: Record<string, string> = { hub_changes: `kind <> 'user.delete'`, hub_users: 'NOT deleted' };
          for (const t of tables.rows) rows.push(JSON.stringify((await hub.pool.query(`SELECT * FROM ${t.table_name} WHERE ${except[t.table_name] ?? 'true'}`)).rows));
          const kept = await hub.pool.query(`SELECT template FROM hub_users WHERE deleted UNION ALL SELECT body->'template' FROM hub_changes WHERE kind = 'user.delete'`);
          assert.ok(kept.rows.every((r: { template: unknown }) => r.template === null), 'a tombstone and a deletion hold no template');
          return rows.join('\n');
        },
        async close() {
          await hub.close();
          await db.drop();
        },
      };
    },
  },
];

for (const impl of implementations) {
  describe(`store contract: ${impl.name}`, function () {
    this.timeout(60_000);
    let h: Harness;
    let s: BiometryStore;
    beforeEach(async function () {
      h = await impl.open();
      s = h.store;
    });
    afterEach(async function () {
      await h.close();
    });

    const tenant = () => s.tenants.create({ name: 'acme', allowedOrigins: ['https://app.example'], livenessMode: 'passive' });
    const newSession = async (tenantId: string, over: { clientState?: string; flow?: Session['flow']; externalUserId?: string | null; ttlSeconds?: number } = {}) =>
      s.sessions.create({
        tenantId,
        clientState: over.clientState ?? crypto.randomUUID(),
        flow: over.flow ?? 'enroll',
        externalUserId: over.externalUserId === undefined ? 'alice' : over.externalUserId,
        redirectUrl: 'https://app.example/done',
        tokenHash: crypto.randomBytes(32),
        ttlSeconds: over.ttlSeconds ?? 300,
        challenge: null,
      });
    const outcome = (status: SessionOutcome['status'], resultUserId: string | null = null): SessionOutcome => ({ status, reason: status === 'success' ? null : 'x', score: null, resultUserId, eventId: `evt_${crypto.randomUUID()}` });
    const audit = (session: Session, o: SessionOutcome): AuditInput => ({
      id: o.eventId,
      tenantId: session.tenantId,
      type: 'session_finished',
      flow: session.flow,
      sessionId: session.id,
      externalUserId: o.resultUserId,
      result: o.status === 'success' ? 'success' : 'fail',
      reason: o.reason,
      score: o.score,
    });
    /** Enrols through a finished session, as the API does. */
    const enrol = async (tenantId: string, id: string, embedding: Float32Array) => {
      const session = (await newSession(tenantId, { externalUserId: id })) as Session;
      const o = outcome('success', id);
      return s.finishSession(session, o, audit(session, o), { kind: 'enroll', externalUserId: id, templates: { [FLEET_MODEL]: embedding } });
    };

    it('tenants and API keys: only the hash of a key is stored, a revoked key finds nothing', async function () {
      const t = await tenant();
      assert.deepEqual([(await s.tenants.get(t.id))?.name, (await s.tenants.get(t.id))?.allowedOrigins, (await s.tenants.get(t.id))?.livenessMode], ['acme', ['https://app.example'], 'passive']);
      const { keyId, apiKey } = await s.tenants.createKey(t.id);
      assert.equal((await s.tenants.findByApiKey(apiKey))?.id, t.id);
      assert.equal(await s.tenants.findByApiKey(`${apiKey}x`), undefined);
      assert.equal((await h.dump()).includes(apiKey), false, 'the key itself is nowhere in the store');
      assert.equal(await s.tenants.revokeKey(keyId), true);
      assert.equal(await s.tenants.revokeKey(keyId), false);
      assert.equal(await s.tenants.findByApiKey(apiKey), undefined);
      assert.equal(await s.tenants.get(crypto.randomUUID()), undefined);
    });

    it("a tenant's own anti-spoofing floor: kept when given, absent otherwise", async function () {
      const strict = await s.tenants.create({ name: 'strict', allowedOrigins: [], livenessMode: 'passive', padThreshold: 0.3 });
      assert.equal((await s.tenants.get(strict.id))?.padThreshold, 0.3);
      assert.equal((await s.tenants.findByApiKey((await s.tenants.createKey(strict.id)).apiKey))?.padThreshold, 0.3);
      assert.equal('padThreshold' in ((await s.tenants.get((await tenant()).id)) ?? {}), false);
    });

    it('sessions: client_state unique per tenant, bound once, found by token hash, expired ones listed', async function () {
      const a = await tenant();
      const b = await tenant();
      const first = await newSession(a.id, { clientState: 'cs-1' });
      assert.ok(first);
      assert.equal(await newSession(a.id, { clientState: 'cs-1' }), undefined, 'taken in this tenant');
      assert.ok(await newSession(b.id, { clientState: 'cs-1' }), 'another tenant may use it');
      assert.equal((await s.sessions.byClientState(a.id, 'cs-1'))?.id, first.id);
      assert.equal(await s.sessions.byId(b.id, first.id), undefined, "a tenant does not see another's session");
      assert.equal(await s.sessions.bind(a.id, first.id), true);
      assert.equal(await s.sessions.bind(a.id, first.id), false, 'bound once');
      assert.equal((await s.sessions.byId(a.id, first.id))?.status, 'in_progress');
      const hash = crypto.randomBytes(32);
      const byToken = await s.sessions.create({ tenantId: a.id, clientState: 'cs-2', flow: 'identify', externalUserId: null, redirectUrl: 'https://app.example/', tokenHash: hash, ttlSeconds: 0, challenge: null });
      assert.equal((await s.sessions.byTokenHash(hash))?.id, byToken?.id);
      assert.deepEqual((await s.sessions.dueForExpiry()).map((x) => x.id), [byToken?.id], 'only the one whose link has run out');
    });

    it('a session ends once: the second finish writes nothing, and its enrolment is rolled back', async function () {
      const t = await tenant();
      const session = (await newSession(t.id, { externalUserId: 'bob' })) as Session;
      const o = outcome('fail');
      assert.equal(await s.finishSession(session, o, audit(session, o)), 'finished');
      const late = outcome('success', 'bob');
      assert.equal(await s.finishSession(session, late, audit(session, late), { kind: 'enroll', externalUserId: 'bob', templates: { [FLEET_MODEL]: face(1) } }), 'already_finished');
      assert.equal(await s.users.get(t.id, 'bob'), undefined, 'no enrolment from the losing finish');
      assert.deepEqual((await s.audit.list(t.id)).map((e) => e.id), [o.eventId], 'one audit event');
      const stored = await s.sessions.byId(t.id, session.id);
      assert.deepEqual([stored?.status, stored?.eventId], ['fail', o.eventId]);
    });

    it('enrolment, update and their preconditions: a changed user is a write_conflict with nothing written', async function () {
      const t = await tenant();
      assert.equal(await enrol(t.id, 'carol', face(1)), 'finished');
      const carol = await s.users.get(t.id, 'carol');
      assert.deepEqual([carol?.externalUserId, carol?.version, carol?.needsReenrolment], ['carol', 1, false]);
      assert.deepEqual((await s.users.templates(carol!))[FLEET_MODEL], face(1));
      assert.equal(await enrol(t.id, 'carol', face(2)), 'write_conflict', 'already enrolled');
      const session = (await newSession(t.id, { flow: 'update_embedding', externalUserId: 'carol' })) as Session;
      const o = outcome('success', 'carol');
      assert.equal(await s.finishSession(session, o, audit(session, o), { kind: 'update', user: carol!, templates: { [FLEET_MODEL]: face(3) } }), 'finished');
      const updated = await s.users.get(t.id, 'carol');
      assert.equal(updated?.version, 2);
      assert.deepEqual((await s.users.templates(updated!))[FLEET_MODEL], face(3));
      assert.deepEqual((await s.users.templateVersions(updated!)).map((v) => [v.version, v.active]), [[1, false], [2, true]]);
      const stale = (await newSession(t.id, { flow: 'update_embedding', externalUserId: 'carol' })) as Session;
      assert.equal(await s.finishSession(stale, o, audit(stale, o), { kind: 'update', user: carol!, templates: { [FLEET_MODEL]: face(4) } }), 'write_conflict', 'decided on version 1, now 2');
      assert.equal((await s.sessions.byId(t.id, stale.id))?.status, 'pending', 'the session stays open to be decided again');
      assert.deepEqual((await s.users.templates((await s.users.get(t.id, 'carol'))!))[FLEET_MODEL], face(3));
    });

    it('users are listed in enrolment order with paging, per tenant; templates are sealed at rest', async function () {
      const a = await tenant();
      const b = await tenant();
      for (const [i, id] of ['u1', 'u2', 'u3'].entries()) await enrol(a.id, id, face(10 + i));
      await enrol(b.id, 'u1', face(20));
      const page = await s.users.list(a.id, 2, 1);
      assert.deepEqual([page.total, page.users.map((u) => u.externalUserId)], [3, ['u2', 'u3']]);
      assert.equal(await s.users.get(b.id, 'u2'), undefined);
      const all = await s.users.activeTemplates();
      assert.deepEqual(all.map((x) => `${x.tenantId === a.id ? 'a' : 'b'}:${x.externalUserId}`).sort(), ['a:u1', 'a:u2', 'a:u3', 'b:u1']);
      assert.deepEqual(all.find((x) => x.tenantId === b.id)?.embedding, face(20));
      const raw = Buffer.from(face(11).buffer).toString('latin1');
      assert.equal((await h.dump()).includes(raw), false, 'no template in the clear');
    });

    it('erasure: templates and the id go from every row, the audit keeps a pseudonym; the id can enrol again', async function () {
      const t = await tenant();
      await enrol(t.id, 'dave-the-erased', face(5));
      const verify = (await newSession(t.id, { flow: 'verify', externalUserId: 'dave-the-erased' })) as Session;
      const o = outcome('success', 'dave-the-erased');
      await s.finishSession(verify, o, audit(verify, o));
      const eventId = await s.eraseUser(t.id, 'dave-the-erased', (pseudonym) => ({ tenantId: t.id, type: 'user_deleted', flow: null, sessionId: null, externalUserId: pseudonym, result: 'success', reason: null, score: null }));
      assert.ok(eventId);
      assert.equal(await s.eraseUser(t.id, 'dave-the-erased', () => assert.fail('no second audit')), null, 'no such user any more');
      assert.equal(await s.users.get(t.id, 'dave-the-erased'), undefined);
      assert.equal((await h.dump()).includes('dave-the-erased'), false, 'the id is in no row');
      const events = await s.audit.list(t.id);
      assert.ok(events.some((e) => e.id === eventId && e.type === 'user_deleted'));
      assert.equal((await s.sessions.byId(t.id, verify.id))?.resultUserId, null);
      assert.equal(await enrol(t.id, 'dave-the-erased', face(6)), 'finished');
      const back = await s.users.get(t.id, 'dave-the-erased');
      assert.ok(back && back.version > 1, 'the version continues past the tombstone');
      assert.deepEqual((await s.users.templateVersions(back)).map((v) => v.active), [true], 'no template from before the erasure');
    });

    it('retention: finished sessions and audit events older than the cutoff go, open ones stay', async function () {
      const t = await tenant();
      const done = (await newSession(t.id)) as Session;
      const o = outcome('fail');
      await s.finishSession(done, o, audit(done, o));
      const open = (await newSession(t.id)) as Session;
      assert.deepEqual(await s.purgeBefore(new Date(Date.now() - 60_000).toISOString()), { sessions: 0, auditEvents: 0 });
      assert.deepEqual(await s.purgeBefore(new Date(Date.now() + 60_000).toISOString()), { sessions: 1, auditEvents: 1 });
      assert.equal(await s.sessions.byId(t.id, done.id), undefined);
      assert.ok(await s.sessions.byId(t.id, open.id));
    });
  });
}
