import assert from 'node:assert/strict';
import os from 'node:os';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { ARTIFACTS, launch, requireChromium, stillClip } from '../support/browser.ts';
import { Client } from '../support/client.ts';
import { BROKER_USERS, type TestDevice, kioskHeaders, startTestDevice } from '../support/device.ts';
import { listen, until } from '../support/mqtt.ts';
import { type Photos, photos, thrice } from '../support/photos.ts';

/**
 * The door kiosk in headless Chromium with a fake webcam: a person walks up, is identified, and
 * the (simulated) relay pulses and an MQTT event goes out, with nobody touching the screen.
 */
describe('door kiosk in Chromium (fake webcam, simulated relay, MQTT)', function () {
  requireChromium(this);
  this.timeout(180_000);

  let device: TestDevice;
  let img: Photos;
  let events: Awaited<ReturnType<typeof listen>>;
  const browsers: Browser[] = [];
  const deviceId = `kiosk-e2e-${process.pid}`;

  before(async function () {
    img = await photos();
    device = await startTestDevice({
      device_id: deviceId,
      liveness: 'passive',
      kiosk: { cooldown_seconds: 120, result_seconds: 2 },
      doors: [
        { id: 'front', name: 'Front door', relay: { driver: 'simulated', pulse_ms: 1800 } },
        { id: 'vault', name: 'Vault', liveness: 'active', relay: { driver: 'simulated', pulse_ms: 1800 } },
      ],
      mqtt: { embedded: { host: '127.0.0.1', port: 0 } },
    });
    const broker = device.svc.service.device!.broker!;
    events = await listen(broker.url, [`authface/${deviceId}/door/+/access`], { ...BROKER_USERS.observer, clientId: 'observer-kiosk-e2e' });
    const api = new Client(device.svc.url, device.apiKey);
    assert.equal((await api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
  });
  after(async function () {
    for (const b of browsers) await b.close().catch(() => undefined);
    await events?.close();
    await device?.close();
  });

  /** Opens a door's kiosk page with a fake webcam showing `photo`; returns the page. */
  async function kiosk(door: string, photo: Buffer, name: string): Promise<Page> {
    const clip = await stillClip(photo, path.join(ARTIFACTS, '..', 'clips', `kiosk-${name}.mjpeg`));
    const browser = await launch({ video: clip });
    browsers.push(browser);
    // what the Electron shell does: the kiosk secret on every request to the local service
    const page = await browser.newPage({ viewport: { width: 1024, height: 768 }, extraHTTPHeaders: kioskHeaders(device) });
    await page.goto(`${device.svc.url}/kiosk?door=${door}`);
    return page;
  }

  const accessEvents = (door: string) => events.messages.filter((m) => m.topic.endsWith(`/door/${door}/access`)).map((m) => JSON.parse(m.payload));

  it('an enrolled person: one relay pulse of the configured length and one MQTT granted event', async function () {
    const page = await kiosk('front', img.personA[1], 'alice');
    await page.waitForSelector('body[data-view="capture"]', { timeout: 30_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-idle.png') });
    await page.waitForSelector('body[data-result="granted"]', { timeout: 60_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-granted.png') });
    await until(() => accessEvents('front').length >= 1, 5000, 'the MQTT event');
    // the person stays in front of the camera: within the cool-down nothing more happens
    await page.waitForTimeout(4000);
    assert.deepEqual(device.relay('front').pulses.map((p) => p.ms), [1800]);
    const published = accessEvents('front');
    assert.equal(published.length, 1);
    assert.deepEqual([published[0].result, published[0].external_user_id, published[0].device_id], ['granted', 'alice', deviceId]);
    await page.close();
  });

  it('an unknown person: denied, no pulse', async function () {
    const before = device.relay('front').pulses.length;
    const page = await kiosk('front', img.personC, 'stranger');
    await page.waitForSelector('body[data-result="denied"]', { timeout: 60_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-denied.png') });
    await until(() => accessEvents('front').some((e) => e.result === 'denied'), 5000, 'the MQTT denial');
    assert.equal(device.relay('front').pulses.length, before);
    assert.equal(accessEvents('front').find((e) => e.result === 'denied').reason, 'not_identified');
    await page.close();
  });

  it('a still photo at an active-liveness door: denied with liveness_failed, no pulse; the screen stops the challenge and starts clean', async function () {
    const page = await kiosk('vault', img.personA[1], 'vault-photo');
    // finding: the colour challenge ran on for seconds after the server had failed the session
    await page.addInitScript({
      content: `addEventListener('DOMContentLoaded', () => {
        const light = document.querySelector('#light');
        new MutationObserver(() => { if (!light.hidden) window.lightShown = true; }).observe(light, { attributes: true, attributeFilter: ['hidden'] });
      });`,
    });
    await page.reload();
    await page.waitForSelector('.step-badge:not([hidden])', { timeout: 60_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-active-challenge.png') });
    await page.waitForSelector('body[data-result="denied"]', { timeout: 120_000 });
    await until(() => accessEvents('vault').length >= 1, 5000, 'the MQTT denial');
    assert.deepEqual(accessEvents('vault').map((e) => [e.result, e.reason]), [['denied', 'liveness_failed']]);
    assert.equal(device.relay('vault').pulses.length, 0);
    assert.equal(await page.evaluate('window.lightShown === true'), false, 'no colour challenge once a movement had failed');
    // finding: after a denial the idle screen kept a stale "Step 1 of 3" badge and progress bar
    // (the capture screen, hidden behind the result, is what the next person sees)
    assert.equal(await page.getAttribute('.step-badge', 'hidden'), '');
    assert.equal(await page.getAttribute('.progress', 'aria-valuenow'), '0');
    await page.close();
  });

  it('a kiosk set to a door the device does not have names that door (finding: "This link is not valid")', async function () {
    const page = await kiosk('cellar', img.personA[1], 'unknown-door');
    await page.waitForSelector('body[data-problem="unknown_door"]', { timeout: 30_000 });
    assert.match((await page.textContent('#problem-title')) ?? '', /cellar/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-unknown-door.png') });
    await page.close();
  });

  it('an enrolment session pushed through the local API opens on the kiosk and comes back', async function () {
    const page = await kiosk('front', img.personB, 'enrol');
    await page.waitForSelector('body[data-view="capture"]', { timeout: 30_000 });
    const api = new Client(device.svc.url, device.apiKey);
    const { biometryUrl, clientState } = await api.start('enroll', { externalUserId: 'bob' });
    const pushed = await api.post('/device/v1/kiosk/open', { door: 'front', biometry_url: biometryUrl });
    assert.equal(pushed.status, 200, JSON.stringify(pushed.body));
    await page.waitForURL(/\/capture\?t=.*&kiosk=front/, { timeout: 15_000 });
    await page.click('[data-action="start"]');
    await page.waitForURL(/\/kiosk\?door=front/, { timeout: 60_000 });
    assert.equal((await api.result(clientState)).body.status, 'success');
    assert.equal((await api.post('/biometry/v1/get-user', { external_user_id: 'bob' })).status, 200);
    await page.close();
  });

  it('the kiosk API answers the device itself only, not the network', async function () {
    const lan = Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
    if (!lan) this.skip();
    const open = await startTestDevice({ device_id: 'lan-test', doors: [{ id: 'front', relay: { driver: 'simulated' } }], mqtt: { embedded: { port: 0 } } }, { HOST: '0.0.0.0' });
    try {
      const port = new URL(open.svc.url).port;
      const headers = kioskHeaders(open);
      assert.equal((await fetch(`http://127.0.0.1:${port}/kiosk/v1/doors/front`, { headers })).status, 200);
      for (const p of ['/kiosk/v1/doors/front', '/kiosk?door=front']) {
        assert.equal((await fetch(`http://${lan}:${port}${p}`, { headers })).status, 404, p);
      }
      const sessions = await fetch(`http://${lan}:${port}/kiosk/v1/doors/front/sessions`, { method: 'POST', headers });
      assert.equal(sessions.status, 404);
    } finally {
      await open.close();
    }
  });

  it('the kiosk page is served with the capture CSP; the device API needs an API key', async function () {
    const res = await fetch(`${device.svc.url}/kiosk?door=front`, { headers: kioskHeaders(device) });
    assert.match(res.headers.get('content-security-policy') ?? '', /default-src 'none'/);
    assert.match(res.headers.get('permissions-policy') ?? '', /camera=\(self\)/);
    const wrongKey = await new Client(device.svc.url, 'afk_nope').post('/device/v1/kiosk/open', { door: 'front', biometry_url: 'x' });
    assert.equal(wrongKey.status, 401);
  });

  // issue 20: a revoked door stops at once, without a restart (the revocation itself, through a
  // hub and a broker, is in fleet-revoke.test.ts; here, what the screen and the device do then)
  it('revoked while the kiosk runs: the screen says the door is out of service, no session starts, every API key is refused', async function () {
    const page = await kiosk('front', img.personA[1], 'revoked');
    await page.waitForSelector('body[data-view="capture"]', { timeout: 30_000 });
    const pulses = device.relay('front').pulses.length;
    const api = new Client(device.svc.url, device.apiKey);
    assert.equal((await api.post('/biometry/v1/list-users', {})).status, 200);
    device.svc.service.events.emit('device.revoked', { deviceId, revokedAt: new Date().toISOString(), wipedAt: new Date().toISOString() });

    await page.waitForSelector('body[data-problem="out_of_service"]', { timeout: 15_000 });
    assert.match(await page.textContent('#problem-title') ?? '', /Front door is out of service/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-out-of-service.png') });
    // alice stays in front of the camera: nothing opens, nothing is asked of the server
    await page.waitForTimeout(3000);
    assert.equal(device.relay('front').pulses.length, pulses);
    const session = await fetch(`${device.svc.url}/kiosk/v1/doors/front/sessions`, { method: 'POST', headers: kioskHeaders(device) });
    assert.equal(session.status, 403);
    for (const [path, body] of [['/biometry/v1/list-users', {}], ['/biometry/v1/enroll', { external_user_id: 'mallory' }], ['/device/v1/set-pin', { external_user_id: 'alice', pin: '4821' }], ['/device/v1/kiosk/open', { door: 'front', biometry_url: 'x' }]] as const) {
      const refused = await api.post(path, body);
      assert.equal(refused.status, 403, path);
      assert.equal((refused.body as { error: { code: string } }).error.code, 'device_revoked', path);
      assert.match((refused.body as { error: { message: string } }).error.message, /revoked by the hub.*join with a new code/, path);
    }
    const ready = await fetch(`${device.svc.url}/readyz`);
    assert.equal(ready.status, 503);
    const readiness = (await ready.json()) as { status: string; checks: { device?: string } };
    assert.equal(readiness.status, 'out_of_service');
    assert.match(readiness.checks.device ?? '', /revoked by the hub/);
    const status = await fetch(`${device.svc.url}/device/v1/status`, { headers: { authorization: `Bearer ${device.apiKey}` } });
    assert.equal(status.status, 200);
    assert.equal(((await status.json()) as { out_of_service: { reason: string } | null }).out_of_service?.reason, 'device_revoked');
    // a remote unlock opens nothing either
    assert.throws(() => device.svc.service.device!.access.unlock('front', 'test'), /revoked/);
    assert.equal(device.relay('front').pulses.length, pulses);
    await page.close();
  });
});
