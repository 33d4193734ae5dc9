import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import type { Browser, Page } from 'playwright-core';
import type { SimulatedContact, SimulatedRelay } from '../../src/access/hardware.ts';
import { normalize } from '../../src/biometrics/embedding.ts';
import { PRIMARY_MODEL } from '../../src/biometrics/matchers/index.ts';
import { FLEET_MODEL } from '../../src/sync/fleet-model.ts';
import { join } from '../../src/cli/join.ts';
import { loadSettings } from '../../src/config/settings.ts';
import { createLogger } from '../../src/core/logger.ts';
import { hubConsoleSource } from '../../src/console/hub-source.ts';
import { type Hub, startHub } from '../../src/hub/service.ts';
import { openTemplate, sealTemplate } from '../../src/sync/envelope.ts';
import { syncTopics } from '../../src/sync/protocol.ts';
import { ROOT } from '../support/datasets.ts';
import { launch, requireChromium } from '../support/browser.ts';
import { testBroker, until } from '../support/mqtt.ts';
import { type TestDatabase, createTestDatabase } from '../support/postgres.ts';
import { type TestService, sharedAnalyzer, startTestService } from '../support/service.ts';
import { authface } from '../support/cli.ts';
import { Client } from '../support/client.ts';
import { type TestDevice, startTestDevice } from '../support/device.ts';

const SCREENS = path.join(ROOT, 'artifacts', 'console');

/**
 * The admin console at the hub, driven in Debian's Chromium against a real hub (PostgreSQL,
 * Mosquitto) with two real doors that joined with codes: sign-in, every page, a remote unlock
 * from the keyboard, the live feed, the CSV export; and its walls (cookie flags, CSRF, Origin,
 * CSP, throttled sign-in). A screenshot of each page goes to artifacts/console/.
 */
describe('the admin console at the hub (Chromium, a hub and two doors)', function () {
  requireChromium(this);
  this.timeout(180_000);
  const prefix = `authface-console-${process.pid}`;
  const masterKey = crypto.randomBytes(32);
  const password = 'a long console password';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-console-'));
  const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.cos(i * 1.7 + k)));
  let brokerUrl: string;
  let db: TestDatabase;
  let hub: Hub;
  let tenantId: string;
  const doors: Record<string, TestService> = {};
  let browser: Browser;
  let page: Page;
  const cspViolations: string[] = [];

  const shot = async (name: string) => {
    fs.mkdirSync(SCREENS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENS, `${name}.png`), fullPage: true });
  };
  const go = (p: string) => page.goto(`${hub.url}${p}${p.includes('?') ? '&' : '?'}tenant=${tenantId}`);

  before(async function () {
    brokerUrl = (await testBroker()).url;
    db = await createTestDatabase();
    // the test's requests come from 127.0.0.1, here a trusted proxy: X-Forwarded-For names each client
    hub = await startHub(loadSettings({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', AUTHFACE_TRUSTED_PROXIES: '127.0.0.1' }), {
      databaseUrl: db.url,
      brokerUrl,
      prefix,
      masterKey,
      logger: createLogger('silent'),
      version: 'test',
      analyzer: await sharedAnalyzer(),
    });
    tenantId = (await hub.biometry.tenants.create({ name: 'Acme offices', allowedOrigins: ['https://app.example.com'], livenessMode: 'passive' })).id;
    await hub.biometry.tenants.create({ name: 'Other tenant', allowedOrigins: [], livenessMode: 'passive' });
    // the admin as an operator makes one; a short password is refused with the reason
    const passwordFile = writePassword(dir, password);
    assert.equal(JSON.parse((await authface(['hub', 'admin', 'add', '--name', 'ada', '--password-file', passwordFile, '--database-url', db.url], {})).stdout).status, 'added');
    await assert.rejects(
      authface(['hub', 'admin', 'add', '--name', 'eve', '--password-file', writePassword(path.join(dir, 'short'), 'short'), '--database-url', db.url], {}),
      (err: { stderr: string }) => /at least 12 characters/.test(err.stderr),
    );
    // people at the hub: alice and bob enrolled, bob deleted since (an erasure to follow)
    const { key, keyVersion } = await hub.store.keys.current(tenantId);
    for (const [i, id] of ['alice', 'bob', 'carol'].entries()) {
      const template = sealTemplate(key, face(i), { tenantId, externalUserId: id, version: 1, model: FLEET_MODEL, keyVersion });
      // carol was enrolled at a door of this release: MobileFaceNet's template travels beside dlib's
      const mfn = normalize(Float32Array.from({ length: 512 }, (_, k) => Math.cos(i * 2.3 + k * 0.9)));
      const further = id === 'carol' ? { templates: [{ model: PRIMARY_MODEL, key_version: keyVersion, template: sealTemplate(key, mfn, { tenantId, externalUserId: id, version: 1, model: PRIMARY_MODEL, keyVersion }) }] } : {};
      await hub.sync.submit(tenantId, { kind: 'user.upsert', external_user_id: id, version: 1, model: FLEET_MODEL, key_version: keyVersion, template, ...further });
    }
    await hub.store.changeGroup(tenantId, 'alice', 'staff', true);
    await hub.sync.submit(tenantId, { kind: 'user.delete', external_user_id: 'bob', version: 2 });
    for (const name of ['front', 'back']) {
      const { code } = await hub.store.devices.add(tenantId, name, 600);
      const dataDir = path.join(dir, name);
      const joined = await join(loadSettings({ AUTHFACE_DATA_DIR: dataDir }), { hub: hub.url, code });
      doors[name] = await startTestService({ AUTHFACE_DATA_DIR: dataDir, AUTHFACE_DEVICE_CONFIG: joined.config_file });
    }
    const head = await hub.store.headSeq(tenantId);
    await until(async () => (await hub.store.devices.list(tenantId)).filter((d) => d.state === 'online' && d.appliedSeq === head).length === 2, 30_000, 'both doors online at the head');
    browser = await launch({ camera: 'none' });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/.test(m.text())) cspViolations.push(m.text());
    });
  });
  after(async function () {
    await browser?.close();
    for (const d of Object.values(doors)) await d.close();
    await hub?.close();
    const c = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    if (tenantId) await c.publishAsync(syncTopics(prefix, tenantId).head, '', { retain: true });
    await c.endAsync();
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('an admin signs in with the keyboard; the session cookie is HttpOnly and SameSite=Strict', async function () {
    await page.goto(`${hub.url}/console`);
    assert.match(page.url(), /\/console\/signin$/, 'signed out: the sign-in page');
    await shot('signin');
    // the name field has the focus; Tab to the password, Enter to sign in
    await page.keyboard.type('ada');
    await page.keyboard.press('Tab');
    await page.keyboard.type(password);
    const [response] = await Promise.all([page.waitForResponse((r) => r.url().endsWith('/console/signin') && r.request().method() === 'POST'), page.keyboard.press('Enter')]);
    const cookie = (await response.allHeaders())['set-cookie'] ?? '';
    assert.match(cookie, /authface_console=[^;]+;.*httponly/i);
    assert.match(cookie, /authface_console=[^;]+;.*samesite=strict/i);
    await page.waitForURL(/\/console\/fleet/);
    const csp = (await page.request.get(`${hub.url}/console/fleet`)).headers()['content-security-policy'];
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline/);
  });

  it('Fleet: both doors online, up to date, with their software and model; filtered by tenant', async function () {
    await go('/console/fleet');
    // this hub runs on an anonymous broker (AUTHFACE_HUB_BROKER_ACL none): every page says what that exposes
    assert.match(await page.locator('[role=alert]').innerText(), /broker without per-device rights .* read every tenant's log .* cannot forge/);
    const rows = page.locator('tbody tr');
    assert.equal(await rows.count(), 2);
    for (const name of ['back', 'front']) {
      const row = page.locator('tbody tr', { has: page.locator(`th:text-is("${name}")`) });
      assert.match(await row.innerText(), /online/);
      assert.match(await row.innerText(), /up to date/);
      assert.match(await row.innerText(), new RegExp(FLEET_MODEL.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
    }
    assert.match(await page.locator('.summary').innerText(), /2 of 2 devices online/);
    assert.equal(await page.locator('.migration').innerText(), '1 of 2 people have the MobileFaceNet template (1 still decided by an older model)', "the tenant's move to the new model, from the hub's people");
    await shot('fleet');
    // the other tenant has no device
    await page.selectOption('#tenant', { label: 'Other tenant' });
    await page.click('.tenant button');
    assert.match(await page.locator('main').innerText(), /No device has joined this tenant yet/);
  });

  it('Doors: a remote unlock from the keyboard opens the door; the live feed shows it', async function () {
    await go('/console/doors');
    const relay = doors.front.service.device!.access.door('main')!.relay as SimulatedRelay;
    const pulses = relay.pulses.length;
    // keyboard only: focus the front door's button, press Enter
    const button = page.getByRole('button', { name: 'Unlock main on front' });
    await button.focus();
    await Promise.all([page.waitForURL(/outcome=ok/), page.keyboard.press('Enter')]);
    assert.match(await page.locator('[role=status]').innerText(), /main on front was unlocked/);
    assert.equal(relay.pulses.length, pulses + 1, "the front door's relay pulsed once");
    // the door's event reaches the hub and the live feed (server-sent events) without a reload
    await page.locator('#live li', { hasText: 'front / main Remote unlock' }).first().waitFor({ timeout: 15_000 });
    const before = await page.locator('#live li').count();
    doors.back.service.device!.access.unlock('main', 'test');
    await until(async () => (await page.locator('#live li').count()) > before, 15_000, 'a new event in the live feed');
    assert.match(await page.locator('#live li').first().innerText(), /back \/ main Remote unlock · granted/);
    const ids = await page.locator('#live li').evaluateAll((items) => items.map((li) => li.getAttribute('data-id')));
    assert.equal(new Set(ids).size, ids.length, 'each event once (the page and the feed do not both add it)');
    await shot('doors');
  });

  it('issue 18, finding 7: a crafted link does not make the Doors page say a door was unlocked', async function () {
    // found: /console/doors?outcome=ok&device=front&door=main showed "main on front was unlocked."
    await go('/console/doors?outcome=ok&device=front&door=main');
    assert.equal(await page.locator('[role=status]').count(), 0, 'no notice from a link the server did not make');
    await go('/console/doors?outcome=ok&device=front&door=main&proof=' + 'A'.repeat(43));
    assert.equal(await page.locator('[role=status]').count(), 0, 'nor with a made-up proof');
  });

  it("Doors: an enrolment link made at a door is shown on that door's screen; another door's link is refused", async function () {
    const sessionAt = async (name: string) => {
      const { apiKey } = doors[name].service.store.tenants.createKey(tenantId);
      return (await new Client(doors[name].url, apiKey).start('enroll', { externalUserId: `new-${name}` })).biometryUrl;
    };
    const opened: string[] = [];
    const off = doors.front.service.events.on('kiosk.open', (e) => opened.push(`${e.doorId} ${e.biometryUrl}`));
    try {
      await go('/console/doors');
      const link = await sessionAt('front');
      await page.getByRole('textbox', { name: 'Capture link (biometry_url)' }).nth(1).fill(link); // back, front: the second row
      await Promise.all([page.waitForURL(/outcome=shown/), page.getByRole('button', { name: 'Show an enrolment link on the screen of main on front' }).press('Enter')]);
      assert.match(await page.locator('[role=status]').innerText(), /The link is on the screen of main on front/);
      assert.equal(opened.length, 1);
      assert.match(opened[0], /^main \/capture\?t=/, "the front door's kiosk opens its own capture page");
      // a link of the back door is not one the front door shows
      await page.getByRole('textbox', { name: 'Capture link (biometry_url)' }).nth(1).fill(await sessionAt('back'));
      await Promise.all([page.waitForURL(/outcome=show_failed/), page.getByRole('button', { name: 'Show an enrolment link on the screen of main on front' }).press('Enter')]);
      assert.match(await page.locator('[role=status]').innerText(), /main on front did not show the link: /);
      assert.equal(opened.length, 1);
    } finally {
      off();
    }
  });

  it('People: searchable; on which doors; the erasure of a deleted person and its progress', async function () {
    await go('/console/people');
    await page.fill('#q', 'ali');
    await page.keyboard.press('Enter');
    await page.waitForURL(/q=ali/);
    const rows = page.locator('tbody tr');
    assert.equal(await rows.count(), 1);
    assert.match(await rows.first().innerText(), /alice[\s\S]*staff[\s\S]*2 of 2/);
    assert.match(await page.locator('main').innerText(), /bob: applied on 2 of 2 devices \(complete\)/);
    // a door's change made on an old copy of alice: a conflict for an admin
    const { key, keyVersion } = await hub.store.keys.current(tenantId);
    const stale = sealTemplate(key, face(9), { tenantId, externalUserId: 'alice', version: 1, model: FLEET_MODEL, keyVersion });
    const result = await hub.store.append(tenantId, { kind: 'user.upsert', external_user_id: 'alice', version: 1, model: FLEET_MODEL, key_version: keyVersion, template: stale }, { origin: 'front' });
    assert.equal(result.status, 'conflict');
    await go('/console/people');
    const conflict = page.locator('h2:text-is("Conflicts waiting for a decision") + table tbody tr');
    assert.match(await conflict.innerText(), /alice\s+front\s+stale_version/);
    await shot('people');
  });

  it('Activity: filtered by door and person; exported as CSV', async function () {
    await go('/console/activity');
    await page.fill('#f-door', 'main');
    await page.click('.filters button');
    await page.waitForURL(/door=main/);
    const doorsShown = await page.locator('tbody tr td:nth-child(3)').allInnerTexts();
    assert.ok(doorsShown.length >= 2 && doorsShown.every((d) => d === 'main'), `only door main: ${doorsShown.join(', ')}`);
    assert.match(await page.locator('tbody').innerText(), /Remote unlock/);
    await shot('activity');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('a[download]')]);
    const csv = fs.readFileSync((await download.path())!, 'utf8').split('\r\n');
    assert.equal(csv[0], 'time,device_id,door_id,event,result,reason,external_user_id');
    assert.ok(csv.filter((l) => l.includes(',main,remote_unlock,granted,')).length >= 2, 'both openings in the export');
    // a person's filter (nobody opened a door by face here), and a time window (UTC, as shown)
    await go('/console/activity?person=alice');
    assert.match(await page.locator('main').innerText(), /No event matches/);
    const minute = (ms: number) => new Date(Date.now() + ms).toISOString().slice(0, 16);
    await go(`/console/activity?door=main&from=${minute(60_000)}`);
    assert.match(await page.locator('main').innerText(), /No event matches/, 'nothing after the next minute');
    await go(`/console/activity?door=main&from=${minute(-600_000)}&to=${minute(120_000)}`);
    assert.ok((await page.locator('tbody tr').count()) >= 2, 'both openings in the last ten minutes');
    assert.deepEqual(cspViolations, [], 'no page broke its Content-Security-Policy');
  });

  it("issue 20: an admin resolves each conflict from the People page (keep the hub's, take the door's, delete); each is audited and a change of the log every door applies", async function () {
    const { key, keyVersion } = await hub.store.keys.current(tenantId);
    const doorChange = async (id: string, version: number, i: number, origin: string) => {
      const template = sealTemplate(key, face(i), { tenantId, externalUserId: id, version, model: FLEET_MODEL, keyVersion });
      const result = await hub.store.append(tenantId, { kind: 'user.upsert', external_user_id: id, version, model: FLEET_MODEL, key_version: keyVersion, template }, { origin });
      assert.equal(result.status, 'conflict', id);
    };
    // besides alice's from the People test: carol changed at back on an old copy, and bob, deleted, enrolled again at front
    await doorChange('carol', 1, 11, 'back');
    await doorChange('bob', 2, 12, 'front');
    const held = async (id: string) =>
      (await hub.store.pool.query<{ version: string; deleted: boolean; template: Parameters<typeof openTemplate>[1] | null }>('SELECT version, deleted, template FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2', [tenantId, id])).rows[0];
    const before = { alice: await held('alice'), carol: await held('carol'), bob: await held('bob') };
    const resolve = async (id: string, button: RegExp) => {
      await go('/console/people');
      const row = page.locator('h2:text-is("Conflicts waiting for a decision") + table tbody tr', { hasText: id });
      assert.equal(await row.count(), 1, id);
      await Promise.all([page.waitForURL(/\/console\/people/), row.getByRole('button', { name: button }).click()]);
    };
    await resolve('alice', /Take the change to alice from front/);
    await resolve('carol', /Keep the hub's version of carol/);
    await resolve('bob', /Delete bob everywhere/);
    await go('/console/people');
    assert.match(await page.locator('main').innerText(), /No conflict\./);
    await shot('people-conflicts-resolved');

    const opens = (id: string, row: { version: string; template: Parameters<typeof openTemplate>[1] | null }) =>
      openTemplate(key, row.template!, { tenantId, externalUserId: id, version: Number(row.version), model: FLEET_MODEL, keyVersion }, FLEET_MODEL);
    const same = (a: Float32Array, b: Float32Array) => a.every((v, k) => Math.abs(v - b[k]) < 1e-5);
    const alice = await held('alice');
    assert.equal(Number(alice.version), Number(before.alice.version) + 1, "above both the hub's version and the door's");
    assert.ok(same(opens('alice', alice), face(9)), "alice holds the door's face");
    const carol = await held('carol');
    assert.equal(Number(carol.version), Number(before.carol.version) + 1);
    assert.ok(same(opens('carol', carol), opens('carol', before.carol)), "carol keeps the hub's face, sealed for the new version");
    const bob = await held('bob');
    assert.deepEqual([bob.deleted, Number(bob.version)], [true, 3], 'bob stays deleted, above the door\'s version');
    // audited, with who decided what
    const audit = (await hub.store.pool.query<{ external_user_id: string; result: string; reason: string }>("SELECT external_user_id, result, reason FROM hub_audit_events WHERE tenant_id = $1 AND type = 'conflict_resolved' ORDER BY created_at", [tenantId])).rows;
    assert.deepEqual(audit.map((a) => [a.external_user_id, a.result]), [['alice', 'take_door'], ['carol', 'keep_hub'], ['bob', 'delete']]);
    assert.ok(audit.every((a) => / by ada$/.test(a.reason)), JSON.stringify(audit));
    // every door applies the resolutions from the log
    const version = (door: string, id: string) => doors[door].service.store.users.get(tenantId, id)?.version;
    await until(() => ['front', 'back'].every((d) => version(d, 'alice') === Number(alice.version) && version(d, 'carol') === Number(carol.version)), 20_000, 'both doors hold the resolved alice and carol');
    // the same from the CLI: another stale change to carol, her hub version kept
    await doorChange('carol', 1, 13, 'front');
    const [open] = await hub.store.conflicts(tenantId);
    const cli = JSON.parse((await authface(['hub', 'conflict', 'resolve', '--tenant', tenantId, '--change-id', open.changeId, '--resolution', 'keep_hub', '--database-url', db.url], { AUTHFACE_HUB_MASTER_KEY: masterKey.toString('hex') })).stdout) as { kind: string; seq: number };
    assert.equal(cli.kind, 'user.upsert');
    assert.equal(Number((await held('carol')).version), Number(carol.version) + 1);
    assert.deepEqual(await hub.store.conflicts(tenantId), []);
    await assert.rejects(authface(['hub', 'conflict', 'resolve', '--tenant', tenantId, '--change-id', open.changeId, '--resolution', 'delete', '--database-url', db.url], { AUTHFACE_HUB_MASTER_KEY: masterKey.toString('hex') }), (err: { stderr: string }) => /no open conflict .*already resolved/.test(err.stderr));
    // a resolution cannot be made twice, nor by a form without its token
    const again = await page.request.post(`${hub.url}/console/conflicts/resolve`, { form: { tenant: tenantId, change_id: crypto.randomUUID(), resolution: 'delete' }, headers: { origin: hub.url } });
    assert.equal(again.status(), 403, 'no CSRF token');
  });

  it("issue 20: an admin sets and removes a person's PIN from the People page; audited, a change of the log every door applies, never in the clear", async function () {
    const PIN = '604817';
    const row = () => page.locator('main table tbody tr', { has: page.locator('th', { hasText: /^carol$/ }) });
    await go('/console/people');
    assert.equal(await row().locator('td').nth(2).innerText().then((t) => t.trim().startsWith('—')), true, 'no PIN yet');
    await row().getByLabel('New PIN for carol (4 to 8 digits)').fill(PIN);
    await Promise.all([page.waitForURL(/\/console\/people/), row().getByRole('button', { name: 'Set PIN' }).click()]);
    assert.match(await row().innerText(), /yes/);
    await shot('people-pin');
    const held = async () => (await hub.store.pool.query<{ pin: object | null }>("SELECT pin FROM hub_users WHERE tenant_id = $1 AND external_user_id = 'carol'", [tenantId])).rows[0].pin;
    assert.ok(await held(), 'the hub holds a sealed verifier');
    assert.equal(JSON.stringify(await held()).includes(PIN), false, 'never the PIN');
    await until(async () => (await Promise.all(['front', 'back'].map((d) => doors[d].service.store.pins.holders(tenantId, PIN)))).every((h) => h.join() === 'carol'), 20_000, "carol's PIN at both doors");
    // a weak PIN is refused with the reason, and nothing changes
    await row().getByLabel('New PIN for carol (4 to 8 digits)').fill('1111');
    await Promise.all([page.waitForResponse((r) => r.url().endsWith('/console/people/pin')), row().getByRole('button', { name: 'Set PIN' }).click()]);
    assert.match(await page.locator('body').innerText(), /choose a PIN that is not one digit repeated/);
    await go('/console/people');
    await Promise.all([page.waitForURL(/\/console\/people/), row().getByRole('button', { name: 'Remove the PIN of carol' }).click()]);
    assert.equal(await held(), null);
    await until(async () => (await Promise.all(['front', 'back'].map((d) => doors[d].service.store.pins.holders(tenantId, PIN)))).every((h) => h.length === 0), 20_000, "carol's PIN gone at both doors");
    const audit = (await hub.store.pool.query<{ type: string; reason: string }>("SELECT type, reason FROM hub_audit_events WHERE tenant_id = $1 AND external_user_id = 'carol' AND type LIKE 'pin_%' ORDER BY created_at", [tenantId])).rows;
    assert.deepEqual(audit.map((a) => [a.type, a.reason]), [['pin_set', 'by console ada'], ['pin_removed', 'by console ada']]);
    const forged = await page.request.post(`${hub.url}/console/people/pin`, { form: { tenant: tenantId, user: 'carol', pin: PIN, action: 'set' }, headers: { origin: hub.url } });
    assert.equal(forged.status(), 403, 'no CSRF token');
  });

  it("issue 18, finding 6: failed sign-ins slow their own address, never the admin's, on every hub", async function () {
    const signIn = async (pw: string, from: string) => {
      const start = await fetch(`${hub.url}/console/signin`);
      const login = /name="_login" value="([^"]+)"/.exec(await start.text())![1];
      return fetch(`${hub.url}/console/signin`, {
        method: 'POST',
        redirect: 'manual',
        headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: `authface_console_login=${login}`, 'x-forwarded-for': `10.9.9.9, ${from}` },
        body: new URLSearchParams({ _login: login, name: 'ada', password: pw }),
      });
    };
    const attacker = '203.0.113.9';
    const statuses = [];
    for (let i = 0; i < 6; i++) statuses.push((await signIn('wrong password', attacker)).status);
    // the first three cost nothing; then each try from there waits (1 s, then longer)
    assert.deepEqual(statuses, [401, 401, 401, 429, 429, 429]);
    const refused = await signIn(password, attacker);
    assert.equal(refused.status, 429, 'from the attacking address even the right password waits');
    assert.ok(Number(refused.headers.get('retry-after')) >= 1);
    // found: after five failures the name was refused everywhere for 15 minutes
    assert.equal((await signIn(password, '198.51.100.7')).status, 302, 'the admin elsewhere signs in');
    // the count is the database's: another hub process (another source on the same database) sees it
    const elsewhere = hubConsoleSource(hub.store, async () => ({ ok: false, error: null }));
    assert.ok((await elsewhere.signIns.wait('ada', attacker)) > 0);
    assert.equal(await elsewhere.signIns.wait('ada', '198.51.100.7'), 0);
    // the wait grows: a failure after the first wait makes the next one longer
    await new Promise((r) => setTimeout(r, 1100));
    assert.equal((await signIn('wrong again', attacker)).status, 401);
    const next = await elsewhere.signIns.wait('ada', attacker);
    assert.ok(next > 1000 && next <= 2000, `the second wait is 2 s (${next} ms)`);
  });

  it('a form without the CSRF token, or from another origin, changes nothing; signing out ends the session', async function () {
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === 'authface_console');
    assert.ok(session && session.httpOnly && session.sameSite === 'Strict');
    const post = (body: Record<string, string>, headers: Record<string, string> = {}) =>
      fetch(`${hub.url}/console/doors/unlock`, {
        method: 'POST',
        redirect: 'manual',
        headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: `authface_console=${session.value}`, ...headers },
        body: new URLSearchParams(body),
      });
    const relay = doors.front.service.device!.access.door('main')!.relay as SimulatedRelay;
    const pulses = relay.pulses.length;
    const form = { tenant: tenantId, device_id: 'front', door_id: 'main' };
    assert.equal((await post(form)).status, 403, 'no token');
    assert.equal((await post({ ...form, _csrf: 'guess' })).status, 403, 'a wrong token');
    const csrf = await page.locator('input[name=_csrf]').first().getAttribute('value');
    assert.equal((await post({ ...form, _csrf: csrf! }, { origin: 'https://evil.example' })).status, 403, 'another origin');
    assert.equal((await post({ ...form, _csrf: csrf! })).status, 302, 'the right token, same origin: accepted');
    await until(() => relay.pulses.length === pulses + 1, 5000, 'one pulse');
    // signing out ends the session on the server, not only in this browser
    await go('/console/fleet');
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.waitForURL(/\/console\/signin/);
    const old = await fetch(`${hub.url}/console/fleet`, { redirect: 'manual', headers: { cookie: `authface_console=${session.value}` } });
    assert.equal(old.status, 302);
    assert.match(old.headers.get('location') ?? '', /\/console\/signin/);
  });
});

/**
 * The same console on a standalone device, limited to it: its doors, its people, its audit
 * trail; an admin made on the device with `authface admin add`.
 */
describe('the console on a standalone device (Chromium)', function () {
  requireChromium(this);
  this.timeout(120_000);
  const password = 'another long password';
  let device: TestDevice;
  let browser: Browser;
  let page: Page;

  before(async function () {
    device = await startTestDevice({
      device_id: 'lobby',
      liveness: 'passive',
      doors: [
        { id: 'entrance', relay: { driver: 'simulated', pulse_ms: 300 } },
        { id: 'storeroom', relay: { driver: 'simulated', pulse_ms: 300 } },
        { id: 'yard', relay: { driver: 'simulated', pulse_ms: 300 }, contact: { driver: 'simulated', pin: 5 } },
      ],
    });
    const { store } = device.svc.service;
    store.users.enroll(device.tenantId, 'dora', { [FLEET_MODEL]: normalize(Float32Array.from({ length: 128 }, (_, k) => Math.sin(k))) });
    const added = await authface(['admin', 'add', '--name', 'keeper', '--password-file', writePassword(device.dir, password)], { AUTHFACE_DATA_DIR: device.svc.dataDir });
    assert.equal(JSON.parse(added.stdout).status, 'added');
    browser = await launch({ camera: 'none' });
    page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  });
  after(async function () {
    await browser?.close();
    await device?.close();
  });

  it('signs in, shows only this device, opens its door, lists its people and its activity', async function () {
    await page.goto(`${device.svc.url}/console`);
    await page.fill('#name', 'keeper');
    await page.fill('#password', password);
    await Promise.all([page.waitForURL(/\/console\/fleet/), page.press('#password', 'Enter')]);
    assert.equal(await page.locator('tbody tr').count(), 1);
    assert.match(await page.locator('tbody tr').innerText(), /lobby\s+online/);
    assert.equal(await page.locator('.migration').innerText(), '0 of 1 people have the MobileFaceNet template (1 still decided by an older model)');
    await page.screenshot({ path: path.join(SCREENS, 'device-fleet.png'), fullPage: true });

    await page.goto(`${device.svc.url}/console/doors`);
    const relay = device.relay('storeroom');
    await Promise.all([page.waitForURL(/outcome=ok/), page.getByRole('button', { name: 'Unlock storeroom on lobby' }).press('Enter')]);
    assert.equal(relay.pulses.length, 1, 'the storeroom opened once');
    await page.locator('#live li', { hasText: 'lobby / storeroom Remote unlock' }).first().waitFor({ timeout: 10_000 });
    device.svc.service.device!.access.unlock('entrance', 'test');
    await page.locator('#live li', { hasText: 'lobby / entrance Remote unlock' }).first().waitFor({ timeout: 10_000 });
    // the yard gate forced open (never unlocked): an alarm, live and in the alarms list
    (device.svc.service.device!.access.door('yard')!.contact as SimulatedContact).set(true);
    await page.locator('#live li', { hasText: 'lobby / yard Alarm · door_forced' }).first().waitFor({ timeout: 10_000 });
    await page.reload();
    assert.match(await page.locator('h2:text-is("Alarms") + ul').innerText(), /yard Alarm · door_forced/);
    await page.screenshot({ path: path.join(SCREENS, 'device-doors.png'), fullPage: true });

    await page.goto(`${device.svc.url}/console/people`);
    assert.match(await page.locator('tbody').innerText(), /dora[\s\S]*1 of 1 \(lobby\)/);
    await page.goto(`${device.svc.url}/console/activity?door=storeroom`);
    assert.equal(await page.locator('tbody tr').count(), 1);
    await page.screenshot({ path: path.join(SCREENS, 'device-activity.png'), fullPage: true });
  });
});

describe('the console behind a proxy that ends TLS', function () {
  it('sets its cookies Secure when PUBLIC_URL is https, though the connection it sees is plain', async function () {
    const device = await startTestDevice({ device_id: 'tls', doors: [{ id: 'main', relay: { driver: 'simulated' } }] }, { PUBLIC_URL: 'https://door.example.com' });
    try {
      const res = await fetch(`${device.svc.url}/console/signin`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('set-cookie') ?? '', /authface_console_login=[^;]+;.*secure/i);
    } finally {
      await device.close();
    }
  });
});

function writePassword(dir: string, password: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'admin-password');
  fs.writeFileSync(file, `${password}\n`, { mode: 0o600 });
  return file;
}
