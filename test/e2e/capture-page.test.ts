import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { resultFinal } from '../../src/api/schemas.ts';
import { ARTIFACTS, callbackServer, hasFfmpeg, launch, requireChromium, stillClip, videoClip } from '../support/browser.ts';
import { Client, assertShape } from '../support/client.ts';
import { hasShared, shared } from '../support/datasets.ts';
import { type Photos, photos } from '../support/photos.ts';
import { type TestService, startTestService } from '../support/service.ts';

/**
 * The capture page in headless Debian Chromium with a fake webcam fed from real photos
 * (../shared/datasets/README.md). Screenshots of every screen go to artifacts/screens/.
 */
describe('capture page in Chromium (fake webcam)', function () {
  requireChromium(this);
  this.timeout(180_000);

  let svc: TestService;
  let callback: Awaited<ReturnType<typeof callbackServer>>;
  let img: Photos;
  let passive: Client;
  let active: Client;
  const clips: Record<string, string> = {};
  const browsers: Browser[] = [];

  before(async function () {
    img = await photos();
    callback = await callbackServer();
    svc = await startTestService();
    passive = new Client(svc.url, svc.tenant({ origins: [callback.origin], liveness: 'passive' }).apiKey);
    active = new Client(svc.url, svc.tenant({ origins: [callback.origin], liveness: 'active' }).apiKey);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const dir = path.join(ARTIFACTS, '..', 'clips');
    clips.a = await stillClip(img.personA[0], path.join(dir, 'person-a.mjpeg'));
    clips.a2 = await stillClip(img.personA[1], path.join(dir, 'person-a-2.mjpeg'));
    clips.b = await stillClip(img.personB, path.join(dir, 'person-b.mjpeg'));
  });

  after(async function () {
    for (const b of browsers) await b.close().catch(() => undefined);
    await svc?.close();
    await callback?.close();
  });

  async function browserWith(video: string | undefined, opts: Parameters<typeof launch>[0] = {}): Promise<Browser> {
    const b = await launch({ video, ...opts });
    browsers.push(b);
    return b;
  }

  /** Opens a biometry_url (pointed at the test server) in a fresh page. */
  async function open(browser: Browser, biometryUrl: string, host = svc.url): Promise<Page> {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const u = new URL(biometryUrl);
    await page.goto(host + u.pathname + u.search);
    return page;
  }

  const view = (page: Page, name: string, timeout = 30_000) => page.waitForSelector(`body[data-view="${name}"]`, { timeout });
  const snap = (page: Page, name: string) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });

  /** Runs a session through the page: start the camera, let the page work, wait for the integrator's callback. */
  async function capture(client: Client, flow: 'enroll' | 'verify', externalUserId: string, video: string, shots?: string) {
    const browser = await browserWith(video);
    const { clientState, biometryUrl } = await client.start(flow, { externalUserId, redirectUrl: `${callback.origin}/done` });
    const page = await open(browser, biometryUrl);
    await view(page, 'intro');
    if (shots) await snap(page, `${shots}-intro`);
    await page.keyboard.press('Tab'); // the page is usable by keyboard: Start is focused, Enter presses it
    await page.focus('[data-action="start"]');
    await page.keyboard.press('Enter');
    await view(page, 'capture');
    if (shots) {
      // the guide is running once it gives advice of its own
      await page.waitForFunction(
        () => {
          const text = (globalThis as unknown as { document: { querySelector(s: string): { textContent: string } | null } }).document.querySelector('#instruction')?.textContent ?? '';
          return text.length > 0 && !text.includes('Preparing');
        },
        null,
        { timeout: 30_000 },
      );
      await snap(page, `${shots}-guidance`);
    }
    await page.waitForURL((u) => u.href.startsWith(callback.origin), { timeout: 120_000 });
    const landed = new URL(page.url());
    await page.close();
    const result = assertShape(resultFinal, (await client.result(clientState)).body);
    return { clientState, landed, result };
  }

  it('passive: enrolls person A, verifies A, refuses B; the browser lands on the callback with client_state', async function () {
    const enrolled = await capture(passive, 'enroll', 'alice', clips.a, 'passive-enroll');
    assert.equal(enrolled.landed.pathname, '/done');
    assert.equal(enrolled.landed.searchParams.get('client_state'), enrolled.clientState);
    assert.equal(enrolled.result.status, 'success', JSON.stringify(enrolled.result));

    const same = await capture(passive, 'verify', 'alice', clips.a2);
    assert.equal(same.landed.searchParams.get('client_state'), same.clientState);
    assert.equal(same.result.status, 'success', JSON.stringify(same.result));

    const other = await capture(passive, 'verify', 'alice', clips.b);
    assert.equal(other.landed.searchParams.get('client_state'), other.clientState);
    assert.equal(other.result.status, 'fail');
    assert.equal(other.result.reason, 'below_threshold');
  });

  it('active: a still photo cannot do the challenge and ends liveness_failed', async function () {
    const browser = await browserWith(clips.a);
    const { clientState, biometryUrl } = await active.start('verify', { externalUserId: 'alice', redirectUrl: `${callback.origin}/done` });
    const page = await open(browser, biometryUrl);
    // the photo cannot turn: once the movement has failed, no colour challenge may follow
    let lightShown = false;
    await page.exposeFunction('reportLight', () => void (lightShown = true));
    await page.addInitScript({
      content: `addEventListener('DOMContentLoaded', () => {
        const light = document.querySelector('#light');
        if (light) new MutationObserver(() => { if (!light.hidden) window.reportLight(); }).observe(light, { attributes: true, attributeFilter: ['hidden'] });
      });`,
    });
    await page.reload();
    await view(page, 'intro');
    await page.click('[data-action="start"]');
    await page.waitForSelector('.step-badge:not([hidden])', { timeout: 60_000 });
    await snap(page, 'active-challenge-step');
    await page.waitForURL((u) => u.href.startsWith(callback.origin), { timeout: 120_000 });
    assert.equal(lightShown, false, 'the screen-light phase ran after a failed movement');
    assert.equal(new URL(page.url()).searchParams.get('client_state'), clientState);
    const result = assertShape(resultFinal, (await active.result(clientState)).body);
    assert.equal(result.status, 'fail');
    assert.equal(result.reason, 'liveness_failed');
  });

  it('active: the replay attack clip (a phone playing a selfie video) does not succeed', async function () {
    if (!hasShared || !hasFfmpeg) {
      console.log('      skipped: needs ../shared/datasets and ffmpeg');
      this.skip();
    }
    const clip = videoClip(shared('spoof', 'replay', 'replay1_clip.mp4'), path.join(ARTIFACTS, '..', 'clips', 'replay1.mjpeg'));
    const browser = await browserWith(clip);
    const { clientState, biometryUrl } = await active.start('verify', { externalUserId: 'alice', redirectUrl: `${callback.origin}/done` });
    const page = await open(browser, biometryUrl);
    await view(page, 'intro');
    await page.click('[data-action="start"]');
    await page.waitForTimeout(4000);
    await snap(page, 'active-replay');
    await page.waitForURL((u) => u.href.startsWith(callback.origin), { timeout: 150_000 });
    const result = (await active.result(clientState)).body;
    console.log(`      replay clip: ${result.status} / ${result.reason}`);
    assert.equal(result.status, 'fail', JSON.stringify(result));
    // refused by a liveness layer, not merely by the face match
    assert.ok(['liveness_failed', 'spoof_detected'].includes(String(result.reason)), String(result.reason));
  });

  it('cancel ends the session as cancelled and returns to the integrator', async function () {
    const browser = await browserWith(clips.b);
    const { clientState, biometryUrl } = await passive.start('verify', { externalUserId: 'alice', redirectUrl: `${callback.origin}/done` });
    const page = await open(browser, biometryUrl);
    await view(page, 'intro');
    await page.click('[data-action="cancel"]');
    await page.waitForURL((u) => u.href.startsWith(callback.origin), { timeout: 30_000 });
    assert.equal(new URL(page.url()).searchParams.get('client_state'), clientState);
    const result = (await passive.result(clientState)).body;
    assert.equal(result.status, 'fail');
    assert.equal(result.reason, 'cancelled');
  });

  it('a used link shows its screen; an expired one too', async function () {
    const browser = await browserWith(clips.b);
    // used: the cancelled session above is over; a fresh one is used up by completing it through the API
    const { biometryUrl, token } = await passive.start('identify', { redirectUrl: `${callback.origin}/done` });
    await passive.capture(token).cancel();
    const used = await open(browser, biometryUrl);
    await view(used, 'problem');
    assert.equal(await used.getAttribute('body', 'data-problem'), 'used');
    assert.match(await used.textContent('#problem-title') ?? '', /already used/);
    assert.equal(await used.isVisible('[data-action="cancel"]'), false);
    await snap(used, 'link-used');

    const shortLived = await startTestService({ AUTHFACE_SESSION_TTL_SECONDS: '1' });
    try {
      const client = new Client(shortLived.url, shortLived.tenant({ origins: [callback.origin] }).apiKey);
      const { biometryUrl: late } = await client.start('identify', { redirectUrl: `${callback.origin}/done` });
      await new Promise((r) => setTimeout(r, 1200));
      const expired = await open(browser, late, shortLived.url);
      await view(expired, 'problem');
      assert.equal(await expired.getAttribute('body', 'data-problem'), 'expired');
      await snap(expired, 'link-expired');
    } finally {
      await shortLived.close();
    }
  });

  it('camera problems each have their screen: permission denied, no camera, camera busy', async function () {
    const cases: { name: string; browser: () => Promise<Browser>; init?: string; expect: string }[] = [
      // without the fake permission prompt, headless Chromium denies the camera
      { name: 'camera-denied', browser: () => launch({ camera: 'none', args: ['--use-fake-device-for-media-stream'] }), expect: 'permission' },
      { name: 'no-camera', browser: () => launch({ camera: 'none', args: ['--use-fake-ui-for-media-stream'] }), expect: 'no_camera' },
      {
        name: 'camera-busy',
        browser: () => launch({ video: clips.b }),
        // the browser reports a camera held by another application like this
        init: `navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('Could not start video source', 'NotReadableError'));`,
        expect: 'camera_busy',
      },
    ];
    for (const c of cases) {
      const browser = await c.browser();
      browsers.push(browser);
      const page = await browser.newPage({ viewport: { width: 390, height: 844 } }); // a phone, portrait
      if (c.init) await page.addInitScript(c.init);
      const { biometryUrl } = await passive.start('identify', { redirectUrl: `${callback.origin}/done` });
      const u = new URL(biometryUrl);
      await page.goto(svc.url + u.pathname + u.search);
      await view(page, 'intro');
      await page.click('[data-action="start"]');
      await view(page, 'problem');
      assert.equal(await page.getAttribute('body', 'data-problem'), c.expect, c.name);
      assert.equal(await page.isVisible('[data-action="retry"]'), true);
      await snap(page, c.name);
    }
  });

  it('an insecure (plain http, not localhost) address shows why the camera cannot start', async function () {
    const browser = await browserWith(clips.b, { args: ['--host-resolver-rules=MAP insecure.test 127.0.0.1'] });
    const { biometryUrl } = await passive.start('identify', { redirectUrl: `${callback.origin}/done` });
    const page = await open(browser, biometryUrl, svc.url.replace('127.0.0.1', 'insecure.test'));
    await view(page, 'problem');
    assert.equal(await page.getAttribute('body', 'data-problem'), 'insecure');
    await snap(page, 'insecure-context');
  });

  it('losing the network during capture shows the network screen', async function () {
    const browser = await browserWith(clips.b);
    const { biometryUrl } = await passive.start('identify', { redirectUrl: `${callback.origin}/done` });
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const u = new URL(biometryUrl);
    await page.goto(svc.url + u.pathname + u.search);
    await view(page, 'intro');
    await page.click('[data-action="start"]');
    await view(page, 'capture');
    await context.setOffline(true);
    await view(page, 'problem');
    assert.equal(await page.getAttribute('body', 'data-problem'), 'network');
    await snap(page, 'network-lost');
    await context.close();
  });

  it('is served with a strict CSP, no-referrer, no-store and the camera allowed for this page only', async function () {
    const { biometryUrl } = await passive.start('identify', { redirectUrl: `${callback.origin}/done` });
    const u = new URL(biometryUrl);
    const res = await fetch(svc.url + u.pathname + u.search);
    const csp = res.headers.get('content-security-policy') ?? '';
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'(;|$)/);
    assert.doesNotMatch(csp, /unsafe-inline|https?:/);
    assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
    assert.equal(res.headers.get('cache-control'), 'no-store');
    assert.match(res.headers.get('permissions-policy') ?? '', /camera=\(self\)/);
    const api = await fetch(`${svc.url}/healthz`);
    assert.match(api.headers.get('permissions-policy') ?? '', /camera=\(\)/);
    // every script and model the page loads is served by the service itself
    const html = await res.text();
    for (const src of html.matchAll(/(?:src|href)="([^"]+)"/g)) assert.ok(src[1].startsWith('/capture/assets/'), src[1]);
  });
});
