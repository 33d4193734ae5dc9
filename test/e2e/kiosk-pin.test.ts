import assert from 'node:assert/strict';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import type { AccessEvent } from '../../src/core/events.ts';
import { ARTIFACTS, launch, requireChromium, stillClip } from '../support/browser.ts';
import { Client } from '../support/client.ts';
import { type TestDevice, kioskHeaders, startTestDevice } from '../support/device.ts';
import { type Photos, photos, thrice } from '../support/photos.ts';

/**
 * A face+pin door in headless Chromium with a fake webcam: the person walks up, types the PIN on
 * the screen's keypad, looks at the camera, and the screen shows the decision and the factor used.
 */
describe('face+pin kiosk in Chromium (keypad, fake webcam, simulated relay)', function () {
  requireChromium(this);
  this.timeout(180_000);
  const PIN = '260471';
  let device: TestDevice;
  let img: Photos;
  const browsers: Browser[] = [];
  const decided: AccessEvent[] = [];

  before(async function () {
    img = await photos();
    device = await startTestDevice({
      device_id: `kiosk-pin-${process.pid}`,
      liveness: 'passive',
      kiosk: { cooldown_seconds: 120, result_seconds: 3 },
      doors: [{ id: 'vault', name: 'Vault', factor: 'face+pin', relay: { driver: 'simulated', pulse_ms: 1000 } }],
      mqtt: { embedded: { host: '127.0.0.1', port: 0 } },
    });
    const api = new Client(device.svc.url, device.apiKey);
    assert.equal((await api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
    assert.equal((await api.post('/device/v1/set-pin', { external_user_id: 'alice', pin: PIN })).status, 200);
    device.svc.service.events.on('access.decided', (e) => decided.push(e));
  });
  after(async function () {
    for (const b of browsers) await b.close().catch(() => undefined);
    await device?.close();
  });

  async function kiosk(photo: Buffer, name: string): Promise<Page> {
    const clip = await stillClip(photo, path.join(ARTIFACTS, '..', 'clips', `kiosk-pin-${name}.mjpeg`));
    const browser = await launch({ video: clip });
    browsers.push(browser);
    const page = await browser.newPage({ viewport: { width: 1024, height: 768 }, extraHTTPHeaders: kioskHeaders(device) });
    await page.goto(`${device.svc.url}/kiosk?door=vault`);
    return page;
  }

  it('the keypad appears when someone steps up; the right PIN and face open the door and the screen says face and PIN', async function () {
    const page = await kiosk(img.personA[1], 'alice');
    await page.waitForSelector('body[data-view="pin"]', { timeout: 60_000 });
    assert.equal(await page.evaluate('document.activeElement?.id'), 'pin-input', 'the PIN field has the focus');
    for (const digit of `${PIN.slice(0, 5)}9`) await page.click(`.keypad [data-digit="${digit}"]`);
    await page.click('.keypad [data-key="erase"]'); // a slip corrected
    await page.click(`.keypad [data-digit="${PIN[5]}"]`);
    assert.equal(await page.inputValue('#pin-input'), PIN);
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-pin-keypad.png') });
    await page.click('.keypad [data-key="ok"]');
    await page.waitForSelector('body[data-result="granted"]', { timeout: 60_000 });
    assert.equal((await page.textContent('#result-factor'))?.trim(), 'Identified by face and PIN');
    assert.equal(await page.inputValue('#pin-input'), '', 'nothing of the PIN stays on the page');
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-pin-granted.png') });
    assert.equal(device.relay('vault').pulses.length, 1);
    assert.deepEqual(decided.map((e) => [e.result, e.externalUserId, e.factor]), [['granted', 'alice', 'face+pin']]);
    await page.close();
  });

  it('a wrong PIN typed on the keyboard: the same face is denied, no pulse', async function () {
    const page = await kiosk(img.personA[2], 'wrong-pin');
    await page.waitForSelector('body[data-view="pin"]', { timeout: 60_000 });
    await page.keyboard.type('5183 90'); // the space is dropped: digits only
    assert.equal(await page.inputValue('#pin-input'), '518390');
    await page.keyboard.press('Enter');
    await page.waitForSelector('body[data-result="denied"]', { timeout: 60_000 });
    assert.equal(await page.isHidden('#result-factor'), true);
    await page.screenshot({ path: path.join(ARTIFACTS, 'kiosk-pin-denied.png') });
    assert.equal(device.relay('vault').pulses.length, 1);
    assert.deepEqual(decided.at(-1) && [decided.at(-1)?.result, decided.at(-1)?.reason, decided.at(-1)?.factor], ['denied', 'not_identified', 'face+pin']);
    await page.close();
  });
});
