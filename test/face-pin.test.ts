import assert from 'node:assert/strict';
import { IdentifyPolicy } from '../src/biometrics/identify-policy.ts';
import { loadSettings } from '../src/config/settings.ts';
import type { AccessEvent, CoreEvents } from '../src/core/events.ts';
import { parseDeviceConfig } from '../src/device/config.ts';
import { diagnose } from '../src/device/doctor.ts';
import { Client } from './support/client.ts';
import { type TestDevice, kioskHeaders, startTestDevice } from './support/device.ts';
import { type Photos, photos, thrice } from './support/photos.ts';

/**
 * The second factor end to end on a device, through the kiosk API the kiosk page uses, with the
 * real engine: the PIN narrows identification to its holders, failures lock a door's PIN entry,
 * and every decision carries its factor. (The kiosk page itself: test/e2e/kiosk-pin.test.ts.)
 */
describe('face+pin doors', function () {
  this.timeout(120_000);
  const ALICE_PIN = '482913';
  const BOB_PIN = '730518';
  let device: TestDevice;
  let img: Photos;
  let api: Client;
  const decided: AccessEvent[] = [];
  const alarms: CoreEvents['door.alarm'][] = [];
  const doorDevice = {
    device_id: `pin-${process.pid}`,
    liveness: 'passive',
    kiosk: { cooldown_seconds: 0 },
    pin: { max_failures: 3, window_seconds: 120, lockout_seconds: 90 },
    doors: [
      { id: 'front', relay: { driver: 'simulated', pulse_ms: 500 } },
      { id: 'vault', factor: 'face+pin', relay: { driver: 'simulated', pulse_ms: 500 } },
      { id: 'safe', factor: 'face+pin', relay: { driver: 'simulated', pulse_ms: 500 } },
    ],
    mqtt: { embedded: { host: '127.0.0.1', port: 0 } },
  };

  before(async function () {
    img = await photos();
    device = await startTestDevice(doorDevice);
    api = new Client(device.svc.url, device.apiKey);
    assert.equal((await api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
    assert.equal((await api.run('enroll', thrice(img.personB), { externalUserId: 'bob' })).result.status, 'success');
    device.svc.service.events.on('access.decided', (e) => decided.push(e));
    device.svc.service.events.on('door.alarm', (e) => alarms.push(e));
  });
  after(async () => device?.close());

  const startAt = (door: string, body?: object) =>
    fetch(`${device.svc.url}/kiosk/v1/doors/${door}/sessions`, {
      method: 'POST',
      headers: { ...kioskHeaders(device), ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body && JSON.stringify(body),
    });

  /** Someone at a door: the PIN (if any) with the session, three frames of `photo`, the door's decision. */
  async function atDoor(door: string, photo: Buffer, pin?: string): Promise<AccessEvent> {
    const res = await startAt(door, pin === undefined ? undefined : { pin });
    const body = (await res.json()) as { token: string; client_state: string; factor: string };
    assert.equal(res.status, 200, JSON.stringify(body));
    const capture = new Client(device.svc.url, '').capture(body.token);
    await capture.session();
    for (let i = 0; i < 3; i++) await capture.frame(photo);
    await capture.complete();
    const event = decided.find((e) => e.clientState === body.client_state);
    assert.ok(event, 'the door decided');
    return event;
  }

  it('set-pin: enrolled users of the caller’s tenant only, 4–8 digits, nothing guessable; the PIN is neither returned nor logged', async function () {
    const set = (body: object, key = device.apiKey) => new Client(device.svc.url, key).post('/device/v1/set-pin', body);
    const ok = await set({ external_user_id: 'alice', pin: ALICE_PIN });
    assert.equal(ok.status, 200);
    assert.equal(JSON.stringify(ok.body).includes(ALICE_PIN), false);
    assert.equal((await set({ external_user_id: 'bob', pin: BOB_PIN })).status, 200);
    assert.deepEqual([(await set({ external_user_id: 'nobody', pin: '5831' })).status], [404]);
    for (const [pin, code] of [['1234', 'weak_pin'], ['777777', 'weak_pin'], ['12a4', 'invalid_pin'], ['123', 'invalid_pin'], ['123456789', 'invalid_pin']]) {
      const r = await set({ external_user_id: 'alice', pin });
      assert.deepEqual([r.status, (r.body.error as { code: string }).code], [400, code], pin);
    }
    const other = device.svc.tenant();
    assert.equal((await set({ external_user_id: 'alice', pin: '5831' }, other.apiKey)).status, 404, "another tenant cannot reach this tenant's users");
    assert.equal((await set({ external_user_id: 'alice', pin: ALICE_PIN }, 'not-a-key')).status, 401);
    const audit = device.svc.service.store.audit.list(device.tenantId, 50);
    assert.ok(audit.some((e) => e.type === 'pin_set' && e.externalUserId === 'alice'));
    assert.equal(device.svc.logs().includes(ALICE_PIN), false, 'the PIN is not in the logs');
  });

  it('the right PIN and the right face: granted, one pulse, the factor on the event and in the audit log', async function () {
    const e = await atDoor('vault', img.personA[1], ALICE_PIN);
    assert.deepEqual([e.result, e.externalUserId, e.factor], ['granted', 'alice', 'face+pin']);
    assert.equal(device.relay('vault').pulses.length, 1);
    const audit = device.svc.service.store.audit.list(device.tenantId, 50).find((a) => a.id === e.eventId);
    assert.deepEqual([audit?.type, audit?.factor], ['access_decision', 'face+pin']);
    assert.equal(device.svc.logs().includes(ALICE_PIN), false);
  });

  it('a wrong PIN, or the right PIN with another enrolled person’s face: denied as not_identified, no pulse (which factor failed is not said)', async function () {
    const before = device.relay('vault').pulses.length;
    const wrongPin = await atDoor('vault', img.personA[1], '905172');
    assert.deepEqual([wrongPin.result, wrongPin.reason, wrongPin.externalUserId, wrongPin.factor], ['denied', 'not_identified', null, 'face+pin']);
    const bobWithAlicesPin = await atDoor('vault', img.personB, ALICE_PIN);
    assert.deepEqual([bobWithAlicesPin.result, bobWithAlicesPin.reason], ['denied', 'not_identified'], 'bob is enrolled, but does not hold this PIN');
    assert.equal(device.relay('vault').pulses.length, before);
  });

  it('a face+pin door needs a PIN, a face door takes none, a PIN is digits', async function () {
    const code = async (res: Response) => [res.status, ((await res.json()) as { error: { code: string } }).error.code];
    assert.deepEqual(await code(await startAt('vault')), [400, 'pin_required']);
    assert.deepEqual(await code(await startAt('front', { pin: ALICE_PIN })), [400, 'pin_not_used']);
    assert.deepEqual(await code(await startAt('vault', { pin: '12ab' })), [400, 'invalid_pin']);
  });

  it('failures lock a door’s PIN entry: 429 with Retry-After, a pin_lockout alarm and audit event; other doors keep working', async function () {
    for (const pin of ['130592', '640271', '851734']) assert.equal((await atDoor('safe', img.personA[1], pin)).result, 'denied');
    const locked = await startAt('safe', { pin: ALICE_PIN });
    assert.equal(locked.status, 429);
    assert.equal(((await locked.json()) as { error: { code: string } }).error.code, 'pin_locked');
    assert.ok(Number(locked.headers.get('retry-after')) > 60);
    assert.deepEqual(alarms.map((a) => [a.doorId, a.type]), [['safe', 'pin_lockout']]);
    assert.ok(device.svc.service.store.audit.list(device.tenantId, 100).some((a) => a.type === 'pin_lockout' && a.reason === 'too_many_failures'));
    // the lock is per door: the vault (2 failures so far, under the limit) still opens for alice
    assert.equal((await atDoor('vault', img.personA[2], ALICE_PIN)).result, 'granted');
  });

  it('a face door: the stranger is denied and the event says face', async function () {
    const e = await atDoor('front', img.personC);
    assert.deepEqual([e.result, e.reason, e.factor], ['denied', 'not_identified', 'face']);
  });

  it('/metrics: the gallery size, the identify threshold in force and the FPIR it gives, per tenant', async function () {
    const text = await (await fetch(`${device.svc.url}/metrics`)).text();
    const value = (name: string) => Number(new RegExp(`^${name}\\{tenant="${device.tenantId}"\\} (\\S+)$`, 'm').exec(text)?.[1]);
    assert.equal(value('authface_gallery_size'), 2);
    const settings = loadSettings({});
    const policy = new IdentifyPolicy({ targetFpir: 0.001, minThreshold: settings.AUTHFACE_MATCH_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN });
    assert.ok(Math.abs(value('authface_identify_threshold') - policy.rule(2).threshold) < 1e-9, `${value('authface_identify_threshold')}`);
    assert.ok(value('authface_identify_expected_fpir') > 0 && value('authface_identify_expected_fpir') <= 0.001);
  });

  it('doctor: above the face-only limit it warns about face-only doors and names the fix; with face+pin everywhere it does not', async function () {
    const settings = loadSettings({ AUTHFACE_DATA_DIR: device.svc.dataDir, AUTHFACE_FACE_ONLY_MAX_GALLERY: '1' });
    const check = async (doors: object[]) => (await diagnose(settings, parseDeviceConfig({ ...doorDevice, doors }))).find((c) => c.name === '1:N');
    const warned = await check(doorDevice.doors);
    assert.equal(warned?.status, 'warn');
    assert.match(warned?.detail ?? '', new RegExp(`2 enrolled, identify threshold ${loadSettings({}).AUTHFACE_MATCH_THRESHOLD.toFixed(4).replace('.', '\\.')}, expected FPIR`));
    assert.match(warned?.detail ?? '', /Face alone is not enough above 1 people: default \(2\) at door\(s\) front/);
    assert.match(warned?.fix ?? '', /factor: face\+pin/);
    assert.equal((await check(doorDevice.doors.filter((d) => d.factor)))?.status, 'ok');
    const roomy = await diagnose(loadSettings({ AUTHFACE_DATA_DIR: device.svc.dataDir }), parseDeviceConfig(doorDevice));
    assert.equal(roomy.find((c) => c.name === '1:N')?.status, 'ok');
  });
});
