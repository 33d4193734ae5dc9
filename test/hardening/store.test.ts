import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { loadSettings } from '../../src/config/settings.ts';
import { parseDeviceConfig } from '../../src/device/config.ts';
import { startService } from '../../src/service.ts';
import { diagnose } from '../../src/device/doctor.ts';
import { openStore } from '../../src/store/index.ts';
import { authface } from '../support/cli.ts';
import { Client } from '../support/client.ts';
import { startTestDevice } from '../support/device.ts';
import { type Photos, photos, thrice } from '../support/photos.ts';
import { type TestService, sharedAnalyzer, startTestService } from '../support/service.ts';

/**
 * Issue 7, section 4: the store is tamper-evident, durable and recoverable. Each test reproduces a
 * finding of the review against a real service and its SQLite file.
 */
describe('the store is tamper-evident, durable and recoverable', function () {
  let img: Photos;
  let dataDir: string;
  before(async () => (img = await photos()));
  beforeEach(() => (dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-store-'))));
  afterEach(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  const start = () => startTestService({ AUTHFACE_DATA_DIR: dataDir });
  /** A service with alice (person A) and bob (person B) enrolled in one tenant; stopped. */
  async function enrolAliceAndBob(): Promise<{ apiKey: string; tenantId: string }> {
    const svc = await start();
    try {
      const tenant = svc.tenant();
      const api = new Client(svc.url, tenant.apiKey);
      assert.equal((await api.run('enroll', img.personA.slice(0, 3), { externalUserId: 'alice' })).result.status, 'success');
      assert.equal((await api.run('enroll', [img.personB, img.personB, img.personB], { externalUserId: 'bob' })).result.status, 'success');
      return { apiKey: tenant.apiKey, tenantId: tenant.id };
    } finally {
      await svc.close();
    }
  }
  const raw = () => new Database(path.join(dataDir, 'authface.db'));
  const dbBytes = () =>
    Buffer.concat(['authface.db', 'authface.db-wal'].filter((f) => fs.existsSync(path.join(dataDir, f))).map((f) => fs.readFileSync(path.join(dataDir, f))));

  it("swapping two users' external_user_id in the database does not swap who they are at the door", async function () {
    const { apiKey } = await enrolAliceAndBob();
    const db = raw();
    db.transaction(() => {
      db.prepare(`UPDATE users SET external_user_id = 'tmp' WHERE external_user_id = 'alice'`).run();
      db.prepare(`UPDATE users SET external_user_id = 'alice' WHERE external_user_id = 'bob'`).run();
      db.prepare(`UPDATE users SET external_user_id = 'bob' WHERE external_user_id = 'tmp'`).run();
    })();
    db.close();

    const svc = await start();
    try {
      const api = new Client(svc.url, apiKey);
      const found = await api.run('identify', img.personA.slice(0, 3));
      assert.notEqual(found.result.external_user_id, 'bob', 'alice must never be identified as bob');
      assert.equal(found.result.reason, 'not_identified');
      for (const id of ['alice', 'bob']) {
        const user = await api.post('/biometry/v1/get-user', { external_user_id: id });
        assert.equal((user.body.user as { needs_reenrolment: boolean }).needs_reenrolment, true, id);
      }
      const verify = await api.run('verify', img.personA.slice(0, 3), { externalUserId: 'bob' });
      assert.equal(verify.result.reason, 'reenrolment_required');
    } finally {
      await svc.close();
    }
  });

  it('one unreadable template flags that user for re-enrolment; the service starts and serves everyone else', async function () {
    const { apiKey } = await enrolAliceAndBob();
    const db = raw();
    const row = db.prepare(`SELECT t.id, t.ciphertext FROM templates t JOIN users u ON u.id = t.user_id WHERE u.external_user_id = 'bob'`).get() as { id: string; ciphertext: Buffer };
    row.ciphertext[5] ^= 0xff;
    db.prepare('UPDATE templates SET ciphertext = ? WHERE id = ?').run(row.ciphertext, row.id);
    db.close();

    const svc = await start();
    try {
      const api = new Client(svc.url, apiKey);
      assert.equal((await api.run('identify', img.personA.slice(0, 3))).result.external_user_id, 'alice');
      const bob = await api.post('/biometry/v1/get-user', { external_user_id: 'bob' });
      assert.equal((bob.body.user as { needs_reenrolment: boolean }).needs_reenrolment, true);
      const alice = await api.post('/biometry/v1/get-user', { external_user_id: 'alice' });
      assert.equal((alice.body.user as { needs_reenrolment: boolean }).needs_reenrolment, false);
      assert.match(svc.logs(), /template could not be opened/);
      // re-enrolment clears the flag: delete, then enrol again
      assert.equal((await api.post('/biometry/v1/delete-user', { external_user_id: 'bob' })).status, 200);
      assert.equal((await api.run('enroll', [img.personB, img.personB, img.personB], { externalUserId: 'bob' })).result.status, 'success');
      assert.equal((await api.run('identify', [img.personB, img.personB, img.personB])).result.external_user_id, 'bob');
    } finally {
      await svc.close();
    }
  });

  it('doctor names the users whose template is unreadable and says what to do', async function () {
    await enrolAliceAndBob();
    const db = raw();
    db.prepare(`UPDATE templates SET nonce = randomblob(12) WHERE user_id = (SELECT id FROM users WHERE external_user_id = 'bob')`).run();
    db.close();
    const checks = await diagnose(loadSettings({ AUTHFACE_DATA_DIR: dataDir }), null);
    const database = checks.find((c) => c.name === 'database')!;
    assert.equal(database.status, 'warn', JSON.stringify(database));
    assert.match(database.detail, /1 user\(s\) need re-enrolment/);
    assert.match(database.fix ?? '', /delete-user.*enrol/);
  });

  it('a deleted master.key is not silently replaced: a clear error says what to restore, and no new key is written', async function () {
    await enrolAliceAndBob();
    fs.rmSync(path.join(dataDir, 'master.key'));
    assert.throws(() => openStore(dataDir, undefined), /master\.key is missing.*2 encrypted template\(s\).*restore master\.key/s);
    assert.equal(fs.existsSync(path.join(dataDir, 'master.key')), false);
  });

  it('a key that does not open the existing data is refused at start', async function () {
    await enrolAliceAndBob();
    assert.throws(() => openStore(dataDir, 'ab'.repeat(32)), /does not open this database/);
  });

  it('the relays are switched off before the templates are read, even when the store cannot open', async function () {
    await enrolAliceAndBob();
    fs.rmSync(path.join(dataDir, 'master.key'));
    let logs = '';
    const logger = pino({ level: 'info' }, new Writable({ write: (chunk, _e, done) => done(void (logs += chunk)) }));
    const device = parseDeviceConfig({ device_id: 'd-off', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { embedded: { port: 0 } } });
    await assert.rejects(startService(loadSettings({ AUTHFACE_DATA_DIR: dataDir, PORT: '0' }), { logger, device, analyzer: await sharedAnalyzer() }), /master\.key is missing/);
    assert.match(logs, /door relays set to off/);
  });

  it('the relays are off before the 1:N index is loaded', async function () {
    const device = await startTestDevice({ device_id: 'd-order', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { embedded: { port: 0 } } });
    try {
      const logs = device.svc.logs();
      const off = logs.indexOf('door relays set to off');
      const loaded = logs.indexOf('templates loaded');
      assert.ok(off >= 0 && loaded >= 0, logs);
      assert.ok(off < loaded, 'relays first');
    } finally {
      await device.close();
    }
  });

  it('an acknowledged enrolment is synced to disk before the answer (synchronous=FULL, secure_delete)', async function () {
    const svc = await start();
    try {
      assert.equal(svc.service.store.db.pragma('synchronous', { simple: true }), 2, 'FULL');
      assert.equal(svc.service.store.db.pragma('journal_mode', { simple: true }), 'wal');
      assert.equal(svc.service.store.db.pragma('secure_delete', { simple: true }), 1);
    } finally {
      await svc.close();
    }
  });

  it('database files are 0600 in a 0700 directory, whatever the umask; doctor checks it', async function () {
    const previous = process.umask(0o022);
    try {
      await enrolAliceAndBob();
      const svc = await start();
      await svc.close();
    } finally {
      process.umask(previous);
    }
    assert.equal((fs.statSync(dataDir).mode & 0o777).toString(8), '700');
    for (const f of fs.readdirSync(dataDir)) assert.equal((fs.statSync(path.join(dataDir, f)).mode & 0o777).toString(8), '600', f);
    const settings = loadSettings({ AUTHFACE_DATA_DIR: dataDir });
    assert.equal((await diagnose(settings, null)).find((c) => c.name === 'files')?.status, 'ok');
    fs.chmodSync(path.join(dataDir, 'authface.db'), 0o644);
    const files = (await diagnose(settings, null)).find((c) => c.name === 'files')!;
    assert.equal(files.status, 'fail');
    assert.match(files.detail, /authface\.db is mode 644/);
    assert.match(files.fix ?? '', /chmod 600/);
  });

  it('backup runs online and restore brings the users back; restore refuses a backup the key cannot open, replacing nothing', async function () {
    this.timeout(180_000);
    const { apiKey } = await enrolAliceAndBob();
    const backup = path.join(dataDir, '..', `${path.basename(dataDir)}.backup`);
    const svc = await start(); // online: the service keeps running during the backup
    let restored: TestService | undefined;
    const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-restore-'));
    try {
      const out = await authface(['backup', '--out', backup], { AUTHFACE_DATA_DIR: dataDir });
      assert.match(out.stdout, /"users": 2/);
      assert.equal((fs.statSync(backup).mode & 0o777).toString(8), '600');
      // a change after the backup is not in it
      await new Client(svc.url, apiKey).post('/biometry/v1/delete-user', { external_user_id: 'bob' });
      await svc.close();

      // a fresh machine with a different key: refused, and nothing is written there
      await assert.rejects(
        authface(['restore', backup], { AUTHFACE_DATA_DIR: elsewhere, AUTHFACE_MASTER_KEY: 'cd'.repeat(32) }),
        (e: { stderr: string }) => /the key does not open this backup/.test(e.stderr),
      );
      assert.deepEqual(fs.readdirSync(elsewhere), []);
      // with the right key file it is restored
      const key = path.join(dataDir, 'master.key');
      const done = await authface(['restore', backup, '--key-file', key], { AUTHFACE_DATA_DIR: elsewhere });
      assert.match(done.stdout, /"users": 2/);
      restored = await startTestService({ AUTHFACE_DATA_DIR: elsewhere });
      const api = new Client(restored.url, apiKey);
      assert.equal((await api.run('identify', [img.personB, img.personB, img.personB])).result.external_user_id, 'bob');
      assert.equal((fs.statSync(path.join(elsewhere, 'master.key')).mode & 0o777).toString(8), '600');
    } finally {
      await restored?.close();
      fs.rmSync(backup, { force: true });
      fs.rmSync(elsewhere, { recursive: true, force: true });
    }
  });

  it('restore refuses to run while the service is running', async function () {
    await enrolAliceAndBob();
    const backup = path.join(dataDir, 'copy.db');
    await authface(['backup', '--out', backup], { AUTHFACE_DATA_DIR: dataDir });
    const svc = await start();
    try {
      await assert.rejects(authface(['restore', backup], { AUTHFACE_DATA_DIR: dataDir }), (e: { stderr: string }) => /a service is running \(pid \d+\) on .*: stop it first/.test(e.stderr));
    } finally {
      await svc.close();
    }
  });

  it("after delete-user the person's identifier is gone from every table and from the database files", async function () {
    const svc = await start();
    try {
      const tenant = svc.tenant();
      const api = new Client(svc.url, tenant.apiKey);
      const id = 'erase-me-7f3a9c';
      assert.equal((await api.run('enroll', img.personA.slice(0, 3), { externalUserId: id })).result.status, 'success');
      assert.equal((await api.run('verify', img.personA.slice(0, 3), { externalUserId: id })).result.status, 'success');
      assert.equal((await api.run('identify', img.personA.slice(0, 3))).result.external_user_id, id);
      assert.ok(dbBytes().includes(id), 'the id is stored while the person is enrolled');
      assert.equal((await api.post('/biometry/v1/delete-user', { external_user_id: id })).status, 200);

      const db = svc.service.store.db;
      for (const table of (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table'`).all() as { name: string }[]).map((t) => t.name)) {
        const rows = db.prepare(`SELECT * FROM "${table}"`).all() as Record<string, unknown>[];
        assert.ok(!JSON.stringify(rows).includes(id), `${table} still holds the id`);
      }
      assert.ok(!dbBytes().includes(id), 'no copy of the id is left in the database file or its WAL');
      // the audit trail keeps its shape with a pseudonym, and the person can enrol again
      const audit = svc.service.store.audit.list(tenant.id);
      assert.ok(audit.some((a) => a.type === 'user_deleted' && /^erased:/.test(a.externalUserId ?? '')));
      assert.equal((await api.run('enroll', img.personA.slice(0, 3), { externalUserId: id })).result.status, 'success');
      const user = await api.post('/biometry/v1/get-user', { external_user_id: id });
      assert.equal((user.body.user as { version: number }).version, 3, 'versions continue after the tombstone');
    } finally {
      await svc.close();
    }
  });

  it('sessions and audit rows older than the retention are removed', async function () {
    const svc = await startTestService({ AUTHFACE_DATA_DIR: dataDir, AUTHFACE_RETENTION_DAYS: '30' });
    try {
      const tenant = svc.tenant();
      const api = new Client(svc.url, tenant.apiKey);
      const old = await api.run('identify', thrice(img.personB));
      const recent = await api.run('identify', thrice(img.personC));
      const db = svc.service.store.db;
      const longAgo = new Date(Date.now() - 31 * 86_400_000).toISOString();
      db.prepare('UPDATE sessions SET created_at = ?, expires_at = ?, completed_at = ? WHERE client_state = ?').run(longAgo, longAgo, longAgo, old.clientState);
      db.prepare(`UPDATE audit_events SET created_at = ? WHERE session_id = (SELECT id FROM sessions WHERE client_state = ?)`).run(longAgo, old.clientState);
      const swept = await svc.service.sweep();
      assert.deepEqual([swept.sessions, swept.auditEvents], [1, 1]);
      assert.equal((await api.result(old.clientState)).status, 404);
      assert.equal((await api.result(recent.clientState)).status, 200);
    } finally {
      await svc.close();
    }
  });
});
