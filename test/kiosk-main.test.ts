import assert from 'node:assert/strict';
import { KIOSK_HEADER, RestartPolicy, isAllowedPermission, kioskHeaders, loadConfig, mayNavigate, navigationGuard, permissionCheckHandler, permissionRequestHandler, readKioskSecret, windowOptions } from '../kiosk/policy.js';

/** The Electron kiosk's rules, exercised without the Electron binary (kiosk/policy.js). */
describe('kiosk shell rules (Electron main process, without Electron)', function () {
  const config = loadConfig({ AUTHFACE_KIOSK_URL: 'http://127.0.0.1:8080/kiosk?door=main' });

  it('shows the local service only', function () {
    assert.equal(config.origin, 'http://127.0.0.1:8080');
    assert.equal(loadConfig({}).url, 'http://127.0.0.1:8080/kiosk');
    for (const bad of ['https://evil.example.com/kiosk', 'file:///etc/passwd', 'http://10.0.0.5:8080/kiosk', 'not a url']) {
      assert.throws(() => loadConfig({ AUTHFACE_KIOSK_URL: bad }), /AUTHFACE_KIOSK_URL/);
    }
  });

  it('adds the kiosk secret to requests for the local service only, never elsewhere', function () {
    const secret = 'k'.repeat(43);
    const add = kioskHeaders(config, secret);
    const headersFor = (url: string, requestHeaders: Record<string, string> = {}) => {
      let out: Record<string, string> = {};
      add({ url, requestHeaders }, (r) => (out = r.requestHeaders));
      return out;
    };
    assert.equal(headersFor('http://127.0.0.1:8080/kiosk/v1/doors/main')[KIOSK_HEADER], secret);
    for (const other of ['http://127.0.0.1:9999/x', 'https://evil.example.com/kiosk', 'http://localhost:8080/kiosk']) {
      assert.equal(headersFor(other)[KIOSK_HEADER], undefined, other);
    }
    // a page cannot set it itself (it would be replaced, or dropped elsewhere)
    assert.equal(headersFor('https://evil.example.com/', { 'x-authface-kiosk': 'forged' })['x-authface-kiosk'], undefined);
    assert.equal(readKioskSecret(config, () => `${secret}\n`), secret);
    assert.throws(() => readKioskSecret(config, () => 'short'), /does not hold a kiosk secret/);
    assert.throws(() => readKioskSecret(config, () => { throw Object.assign(new Error('x'), { code: 'EACCES' }); }), /cannot read the kiosk secret.*EACCES/);
    assert.equal(loadConfig({}).secretFile, '/var/lib/authface/kiosk.secret');
  });

  it('is full screen without dev tools in production, windowed only in dev mode', function () {
    const prod = windowOptions(config);
    assert.equal(prod.kiosk, true);
    assert.equal(prod.fullscreen, true);
    assert.equal(prod.webPreferences.devTools, false);
    assert.equal(prod.webPreferences.nodeIntegration, false);
    assert.equal(prod.webPreferences.contextIsolation, true);
    assert.equal(prod.webPreferences.sandbox, true);
    assert.equal(windowOptions(loadConfig({ AUTHFACE_KIOSK_DEV: '1' })).webPreferences.devTools, true);
  });

  const permissions: [string, string, { mediaTypes?: string[] } | undefined, boolean][] = [
    ['media', 'http://127.0.0.1:8080', { mediaTypes: ['video'] }, true],
    ['media', 'http://127.0.0.1:8080', { mediaTypes: ['video', 'audio'] }, false],
    ['media', 'http://127.0.0.1:8080', { mediaTypes: ['audio'] }, false],
    ['media', 'http://127.0.0.1:9999', { mediaTypes: ['video'] }, false],
    ['media', 'https://evil.example.com', { mediaTypes: ['video'] }, false],
    ['geolocation', 'http://127.0.0.1:8080', undefined, false],
    ['notifications', 'http://127.0.0.1:8080', undefined, false],
    ['clipboard-read', 'http://127.0.0.1:8080', undefined, false],
    ['openExternal', 'http://127.0.0.1:8080', undefined, false],
  ];
  for (const [permission, origin, details, allowed] of permissions) {
    it(`${allowed ? 'grants' : 'denies'} ${permission} ${details?.mediaTypes?.join('+') ?? ''} to ${origin}`, function () {
      assert.equal(isAllowedPermission(config, permission, origin, details), allowed);
    });
  }

  it('wires the same rule into both Electron permission handlers', function () {
    const answers: boolean[] = [];
    permissionRequestHandler(config)({ getURL: () => 'http://127.0.0.1:8080/kiosk' }, 'media', (ok: boolean) => answers.push(ok), { mediaTypes: ['video'], requestingUrl: 'http://127.0.0.1:8080/kiosk' });
    permissionRequestHandler(config)({ getURL: () => 'https://evil.example.com/' }, 'media', (ok: boolean) => answers.push(ok), { mediaTypes: ['video'], requestingUrl: 'https://evil.example.com/' });
    assert.deepEqual(answers, [true, false]);
    assert.equal(permissionCheckHandler(config)(null, 'media', 'http://127.0.0.1:8080', { mediaType: 'video' }), true);
    assert.equal(permissionCheckHandler(config)(null, 'media', 'http://127.0.0.1:8080', { mediaType: 'audio' }), false);
  });

  it('refuses every navigation away from the service', function () {
    assert.equal(mayNavigate(config, 'http://127.0.0.1:8080/capture?t=abc&kiosk=main'), true);
    for (const url of ['https://app.example.com/done?client_state=x', 'http://127.0.0.1:8081/', 'file:///etc/passwd', 'javascript:alert(1)']) {
      let prevented = false;
      navigationGuard(config)({ preventDefault: () => (prevented = true) }, url);
      assert.equal(prevented, true, url);
    }
  });

  it('reloads a crashed page at once, but backs off when it keeps crashing', function () {
    let t = 0;
    const policy = new RestartPolicy({ burst: 3, windowMs: 60_000, cooldownMs: 30_000, now: () => t });
    assert.deepEqual([policy.onFailure(), policy.onFailure(), policy.onFailure()], [0, 0, 0]);
    assert.equal(policy.onFailure(), 30_000, 'the fourth failure within a minute waits');
    t += 61_000;
    assert.equal(policy.onFailure(), 0, 'old failures are forgotten');
  });
});
