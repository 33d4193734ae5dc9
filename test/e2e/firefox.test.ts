import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { ARTIFACTS, callbackServer, cameraFrame } from '../support/browser.ts';
import { Client } from '../support/client.ts';
import { type Photos, photos } from '../support/photos.ts';
import { type TestService, startTestService } from '../support/service.ts';

interface Location {
  href: string;
}

const FIREFOX = process.env.FIREFOX_PATH ?? '/usr/bin/firefox-esr';

/**
 * The capture page in Debian's Firefox ESR, driven over WebDriver BiDi (puppeteer-core; no browser
 * download). Firefox has no file-backed fake webcam, so the camera is a canvas stream showing a
 * real photo: the page's own code (video, Human, snapshots, uploads) runs unchanged.
 */
describe('capture page in Firefox ESR', function () {
  this.timeout(120_000);
  let browser: Browser;
  let svc: TestService;
  let api: Client;
  let img: Photos;
  let callback: Awaited<ReturnType<typeof callbackServer>>;

  before(async function () {
    if (!fs.existsSync(FIREFOX)) {
      console.log(`      skipped: ${FIREFOX} is not installed (apt-get install firefox-esr)`);
      this.skip();
    }
    img = await photos();
    callback = await callbackServer();
    svc = await startTestService();
    api = new Client(svc.url, svc.tenant({ origins: [callback.origin] }).apiKey);
    browser = await puppeteer.launch({
      browser: 'firefox',
      executablePath: FIREFOX,
      headless: true,
      extraPrefsFirefox: { 'media.navigator.permission.disabled': true },
    });
  });
  after(async function () {
    await browser?.close();
    await svc?.close();
    await callback?.close();
  });

  /** A page whose camera shows `photo` (or fails with `error`), on a biometry_url of ours. */
  async function open(biometryUrl: string, camera: { photo?: Buffer; error?: string }): Promise<Page> {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    const source = camera.photo ? `data:image/jpeg;base64,${(await cameraFrame(camera.photo)).toString('base64')}` : '';
    await page.evaluateOnNewDocument(
      camera.error
        ? `navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('denied', ${JSON.stringify(camera.error)}));`
        : `navigator.mediaDevices.getUserMedia = async () => {
             const image = new Image(); image.src = ${JSON.stringify(source)}; await image.decode();
             const canvas = document.createElement('canvas'); canvas.width = 640; canvas.height = 480;
             const ctx = canvas.getContext('2d'); const draw = () => ctx.drawImage(image, 0, 0, 640, 480);
             draw(); setInterval(draw, 100); return canvas.captureStream(15);
           };`,
    );
    const u = new URL(biometryUrl);
    await page.goto(svc.url + u.pathname + u.search);
    return page;
  }

  it('enrolls through the page and lands on the callback with client_state', async function () {
    const { biometryUrl, clientState } = await api.start('enroll', { externalUserId: 'bob', redirectUrl: `${callback.origin}/done` });
    const page = await open(biometryUrl, { photo: img.personB });
    await page.waitForSelector('body[data-view="intro"]');
    await page.screenshot({ path: path.join(ARTIFACTS, 'firefox-intro.png') });
    await page.click('[data-action="start"]');
    await page.waitForFunction((origin: string) => (globalThis as unknown as { location: Location }).location.href.startsWith(origin), { timeout: 60_000 }, callback.origin);
    assert.equal(new URL(page.url()).searchParams.get('client_state'), clientState);
    const result = (await api.result(clientState)).body;
    assert.equal(result.status, 'success', JSON.stringify(result));
    await page.close();
  });

  it('shows its screens: camera permission denied, used link', async function () {
    const { biometryUrl } = await api.start('identify', { redirectUrl: `${callback.origin}/done` });
    const denied = await open(biometryUrl, { error: 'NotAllowedError' });
    await denied.waitForSelector('body[data-view="intro"]');
    await denied.click('[data-action="start"]');
    await denied.waitForSelector('body[data-problem="permission"]');
    await denied.screenshot({ path: path.join(ARTIFACTS, 'firefox-camera-denied.png') });
    await denied.close();

    const { token, biometryUrl: used } = await api.start('identify', { redirectUrl: `${callback.origin}/done` });
    await api.capture(token).cancel();
    const page = await open(used, { photo: img.personB });
    await page.waitForSelector('body[data-problem="used"]');
    await page.close();
  });
});
