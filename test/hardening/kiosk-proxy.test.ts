import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Capture } from '../support/client.ts';
import { Client } from '../support/client.ts';
import { type TestDevice, kioskHeaders, startTestDevice } from '../support/device.ts';
import { type Photos, photos } from '../support/photos.ts';
import { startReverseProxy } from '../support/proxy.ts';

/**
 * Issue 7, section 2: "Behind [a same-host reverse proxy] every request comes from 127.0.0.1. A
 * LAN client went through such a proxy, got an identify session for the door, sent three photos
 * of an enrolled person and was granted." The kiosk API is now decided by a per-device secret
 * that only the local kiosk shell holds, and refuses anything that came through a proxy.
 */
describe('the kiosk API is not reachable through a proxy on the same box', function () {
  let device: TestDevice;
  let img: Photos;
  let secret: string;
  const proxies: { close(): Promise<void> }[] = [];

  before(async function () {
    img = await photos();
    device = await startTestDevice({ device_id: 'proxied', liveness: 'passive', doors: [{ id: 'front', relay: { driver: 'simulated' } }], mqtt: { embedded: { port: 0 } } });
    const api = new Client(device.svc.url, device.apiKey);
    assert.equal((await api.run('enroll', img.personA.slice(0, 3), { externalUserId: 'alice' })).result.status, 'success');
    secret = kioskHeaders(device)['x-authface-kiosk'];
  });
  after(async function () {
    for (const p of proxies) await p.close();
    await device?.close();
  });

  async function proxy(forwardedFor: boolean): Promise<string> {
    const p = await startReverseProxy(device.svc.url, { forwardedFor });
    proxies.push(p);
    return p.url;
  }

  /** The attack of the finding: an identify session for the door, three photos of alice, complete. */
  async function attack(base: string, headers: Record<string, string> = {}): Promise<{ session: number; granted: boolean }> {
    const res = await fetch(`${base}/kiosk/v1/doors/front/sessions`, { method: 'POST', headers });
    if (res.status !== 200) return { session: res.status, granted: false };
    const { token } = (await res.json()) as { token: string };
    const capture = new Capture(base, token);
    await capture.session();
    for (const photo of img.personA.slice(0, 3)) await capture.frame(photo);
    await capture.complete();
    return { session: 200, granted: device.relay('front').pulses.length > 0 };
  }

  it('a LAN client going through a same-host proxy gets no door session and opens nothing (the finding)', async function () {
    const viaProxy = await proxy(false);
    const result = await attack(viaProxy);
    assert.deepEqual(result, { session: 403, granted: false });
    const body = (await (await fetch(`${viaProxy}/kiosk/v1/doors/front`)).json()) as { error: { code: string } };
    assert.equal(body.error.code, 'kiosk_only');
  });

  it('the kiosk page and its events are refused through the proxy too', async function () {
    const viaProxy = await proxy(false);
    for (const p of ['/kiosk?door=front', '/kiosk/v1/doors/front', '/kiosk/v1/doors/front/events']) {
      assert.equal((await fetch(`${viaProxy}${p}`)).status, 403, p);
    }
  });

  it('a kiosk call carrying X-Forwarded-For, Forwarded or Via is refused, even with the secret', async function () {
    const viaProxy = await proxy(true);
    assert.equal((await attack(viaProxy, { 'x-authface-kiosk': secret })).session, 403);
    for (const header of [{ forwarded: 'for=192.0.2.7' }, { 'x-forwarded-for': '192.0.2.7' }, { via: '1.1 proxy' }] as Record<string, string>[]) {
      const res = await fetch(`${device.svc.url}/kiosk/v1/doors/front`, { headers: { 'x-authface-kiosk': secret, ...header } });
      assert.equal(res.status, 403, JSON.stringify(header));
    }
    assert.equal(device.relay('front').pulses.length, 0);
  });

  it('on the device itself, without the kiosk secret (or with a wrong one), nothing either', async function () {
    assert.equal((await fetch(`${device.svc.url}/kiosk/v1/doors/front`)).status, 403);
    assert.equal((await fetch(`${device.svc.url}/kiosk/v1/doors/front`, { headers: { 'x-authface-kiosk': 'x'.repeat(43) } })).status, 403);
  });

  it('the kiosk shell, holding the secret, is served and its person granted', async function () {
    const result = await attack(device.svc.url, { 'x-authface-kiosk': secret });
    assert.deepEqual(result, { session: 200, granted: true });
  });

  it('the secret is a 0600 file of the data directory, the same after a restart', async function () {
    const file = path.join(device.svc.dataDir, 'kiosk.secret');
    assert.equal((fs.statSync(file).mode & 0o777).toString(8), '600');
    assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
    await device.restart();
    assert.equal(fs.readFileSync(file, 'utf8').trim(), secret);
    assert.equal((await fetch(`${device.svc.url}/kiosk/v1/doors/front`, { headers: { 'x-authface-kiosk': secret } })).status, 200);
  });
});
