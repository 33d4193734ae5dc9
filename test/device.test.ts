import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { loadSettings } from '../src/config/settings.ts';
import { AccessController } from '../src/access/controller.ts';
import { PinGate } from '../src/access/pin-gate.ts';
import { DoorHardware, type SimulatedContact, type SimulatedRelay } from '../src/access/hardware.ts';
import { checkPolicy, fileGroups } from '../src/access/policy.ts';
import { EventBus, type AccessEvent, type CoreEvents, type DoorStatus } from '../src/core/events.ts';
import { createLogger } from '../src/core/logger.ts';
import { type DeviceConfig, deviceConfigReference, doorLiveness, loadDeviceConfig, parseDeviceConfig } from '../src/device/config.ts';
import { ServiceState } from '../src/device/out-of-service.ts';
import { openStore } from '../src/store/index.ts';
import { Client } from './support/client.ts';
import { ROOT } from './support/datasets.ts';
import { startTestDevice } from './support/device.ts';
import { photos, thrice } from './support/photos.ts';

const run = promisify(execFile);

describe('device configuration file', function () {
  it('the example configurations for a Jetson Orin Nano and a Raspberry Pi 5 are valid', function () {
    for (const f of ['jetson-orin-nano.yaml', 'raspberry-pi-5.yaml']) {
      const c = loadDeviceConfig(path.join(ROOT, 'firmware-config', 'examples', f));
      assert.ok(c.doors.length >= 1, f);
    }
  });

  it('firmware-config/README.md documents every option (generated from the schema)', function () {
    const readme = fs.readFileSync(path.join(ROOT, 'firmware-config', 'README.md'), 'utf8');
    assert.ok(readme.includes(deviceConfigReference()), 'run `authface config --device` and paste it into firmware-config/README.md');
  });

  const base = { device_id: 'd1', doors: [{ id: 'main' }] };
  const hubKey = 'MCowBQYDK2VwAyEAx0ZL2nWvLg1PvHtGv9zXK2n8c0c=';
  const fleet = { ...base, tenant_id: '2d1e8b0c-0d7e-4b5a-9a41-5d6f3c2b1a00', mqtt: { url: 'mqtt://127.0.0.1:1883' }, remote_commands: { public_key: hubKey }, sync: { tenant_key_file: 'tenant-key.json' } };
  const bad: [string, unknown, RegExp][] = [
    ['a device id with a space', { ...base, device_id: 'front door' }, /device_id:/],
    ['no doors', { device_id: 'd1', doors: [] }, /doors:/],
    ['a relay pin that is not a number', { ...base, doors: [{ id: 'main', relay: { pin: 'seventeen' } }] }, /doors\.0\.relay\.pin:/],
    ['an unknown key', { ...base, colour: 'red' }, /colour/],
    ['a misspelled door key', { ...base, doors: [{ id: 'main', relais: {} }] }, /doors\.0.*relais/],
    ['a bad schedule time', { ...base, doors: [{ id: 'main', allow: { schedule: { windows: [{ days: ['mon'], from: '25:00', to: '18:00' }] } } }] }, /doors\.0\.allow\.schedule\.windows\.0\.from:/],
    ['a group that is not defined', { ...base, doors: [{ id: 'main', allow: { groups: ['staff'] } }] }, /doors\.0\.allow\.groups: group staff/],
    ['a kiosk door that does not exist', { ...base, kiosk: { door: 'back' } }, /kiosk\.door: no door back/],
    ['two doors with one id', { ...base, doors: [{ id: 'main' }, { id: 'main' }] }, /doors\.1\.id: door id main is used twice/],
    ['a broker URL without a scheme', { ...base, mqtt: { url: 'broker:1883' } }, /mqtt\.url:/],
    ['groups in the file of a fleet device', { ...fleet, groups: { staff: ['alice'] } }, /groups: a fleet device takes its groups from the hub/],
    ["a fleet device without the hub's key", { ...fleet, remote_commands: {} }, /remote_commands\.public_key: sync needs the hub's key/],
  ];
  for (const [name, raw, expected] of bad) {
    it(`refuses ${name}, naming the key`, function () {
      assert.throws(() => parseDeviceConfig(raw), expected);
    });
  }

  it("a fleet door may name groups its file does not define: the hub's log defines them", function () {
    const c = parseDeviceConfig({ ...fleet, doors: [{ id: 'lab', allow: { groups: ['staff'] } }] });
    assert.deepEqual(c.doors[0].allow.groups, ['staff']);
  });

  it('fills in documented defaults', function () {
    const c = parseDeviceConfig(base);
    // no device-wide liveness: a standalone door is active, a fleet door follows its hub tenant
    assert.equal(c.liveness, undefined);
    assert.equal(doorLiveness(c, c.doors[0]), 'active');
    assert.equal(doorLiveness(c, c.doors[0], 'passive'), 'active', 'a standalone device does not follow its tenant');
    const f = parseDeviceConfig(fleet);
    assert.deepEqual([doorLiveness(f, f.doors[0], 'passive'), doorLiveness(f, f.doors[0], 'active'), doorLiveness(f, f.doors[0])], ['passive', 'active', 'active']);
    assert.deepEqual(c.doors[0].relay, { driver: 'auto', pin: 17, active_low: false, pulse_ms: 3000 });
    assert.equal(c.mqtt.topic_prefix, 'authface');
    assert.equal(c.kiosk.cooldown_seconds, 5);
  });
});

describe('access policy (who may open a door, and when)', function () {
  const config = parseDeviceConfig({
    device_id: 'd1',
    groups: { staff: ['alice', 'bob'], cleaners: ['carol'] },
    doors: [
      { id: 'open' },
      { id: 'staff', allow: { groups: ['staff'] } },
      { id: 'office', allow: { groups: ['staff', 'cleaners'], schedule: { timezone: 'Europe/Paris', windows: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '08:00', to: '18:00' }] } } },
      { id: 'night', allow: { schedule: { timezone: 'UTC', windows: [{ days: ['fri'], from: '22:00', to: '06:00' }] } } },
    ],
  });
  const door = (id: string) => config.doors.find((d) => d.id === id)!;
  // 2026-11-23 is a Monday
  const cases: [string, string, string, string | null][] = [
    ['open', 'anyone', '2026-11-29T03:00:00Z', null],
    ['staff', 'alice', '2026-11-29T03:00:00Z', null],
    ['staff', 'carol', '2026-11-29T03:00:00Z', 'not_in_group'],
    ['staff', 'mallory', '2026-11-29T03:00:00Z', 'not_in_group'],
    ['office', 'carol', '2026-11-23T08:30:00Z', null], // Monday 09:30 in Paris
    ['office', 'alice', '2026-11-23T06:30:00Z', 'outside_schedule'], // Monday 07:30 in Paris
    ['office', 'alice', '2026-11-23T16:59:00Z', null], // 17:59 Paris
    ['office', 'alice', '2026-11-23T17:00:00Z', 'outside_schedule'], // 18:00 Paris: `to` is exclusive
    ['office', 'alice', '2026-11-28T10:00:00Z', 'outside_schedule'], // Saturday
    ['office', 'mallory', '2026-11-23T10:00:00Z', 'not_in_group'], // group is checked first
    ['office', 'bob', '2026-07-06T06:30:00Z', null], // summer time: 08:30 in Paris
    ['night', 'x', '2026-11-27T23:00:00Z', null], // Friday 23:00
    ['night', 'x', '2026-11-28T05:59:00Z', null], // Saturday 05:59: the Friday window spans midnight
    ['night', 'x', '2026-11-28T06:00:00Z', 'outside_schedule'],
    ['night', 'x', '2026-11-27T05:00:00Z', 'outside_schedule'], // Friday morning belongs to Thursday's window
  ];
  for (const [d, user, at, expected] of cases) {
    it(`${d}: ${user} at ${at} → ${expected ?? 'allowed'}`, function () {
      assert.equal(checkPolicy(fileGroups(config), door(d), user, new Date(at)), expected);
    });
  }
});

describe('access controller (simulated relay and contact)', function () {
  let dir: string;
  let store: ReturnType<typeof openStore>;
  let events: EventBus;
  let access: AccessController;
  let hardware: DoorHardware;
  let config: DeviceConfig;
  let decided: AccessEvent[];
  let alarms: CoreEvents['door.alarm'][];
  const tenantId = 't-1';

  const finished = (over: Partial<CoreEvents['session.finished']> = {}): CoreEvents['session.finished'] => ({
    tenantId,
    sessionId: `s-${Math.random()}`,
    clientState: 'cs',
    flow: 'identify',
    status: 'success',
    reason: null,
    externalUserId: 'alice',
    score: 0.97,
    eventId: 'evt_x',
    doorId: 'main',
    factor: 'face',
    ...over,
  });

  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-access-'));
    store = openStore(dir, undefined);
    events = new EventBus();
    decided = [];
    alarms = [];
    events.on('access.decided', (e) => decided.push(e));
    events.on('door.alarm', (e) => alarms.push(e));
    config = parseDeviceConfig({
      device_id: 'd1',
      groups: { staff: ['alice'] },
      kiosk: { cooldown_seconds: 60 },
      doors: [
        { id: 'main', relay: { driver: 'simulated', pulse_ms: 1500 }, contact: { driver: 'simulated', pin: 5, held_open_seconds: 1 } },
        { id: 'lab', allow: { groups: ['staff'] }, relay: { driver: 'simulated' } },
      ],
    });
    hardware = DoorHardware.open(config.doors);
    access = new AccessController(config, hardware, tenantId, store.audit, events, createLogger('silent'), fileGroups(config), new ServiceState(events));
  });
  afterEach(function () {
    access.close();
    hardware.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const relay = (d: string) => access.door(d)!.relay as SimulatedRelay;

  it('a granted identification pulses the relay once, for the configured time, and is audited', function () {
    events.emit('session.finished', finished());
    assert.deepEqual(relay('main').pulses.map((p) => p.ms), [1500]);
    assert.equal(decided.length, 1);
    assert.equal(decided[0].result, 'granted');
    assert.equal(decided[0].externalUserId, 'alice');
    const audit = store.audit.list(tenantId);
    assert.equal(audit[0].type, 'access_decision');
    assert.equal(audit[0].id, decided[0].eventId);
  });

  it('a failed session is a denial with its reason, and no pulse', function () {
    events.emit('session.finished', finished({ status: 'fail', reason: 'liveness_failed', externalUserId: null }));
    assert.equal(relay('main').pulses.length, 0);
    assert.deepEqual([decided[0].result, decided[0].reason], ['denied', 'liveness_failed']);
  });

  it('once the hub revokes the device, a session that finishes after it denies (device_revoked) and no remote unlock opens (issue 20)', function () {
    events.emit('device.revoked', { deviceId: 'd1', revokedAt: new Date().toISOString(), wipedAt: new Date().toISOString() });
    events.emit('session.finished', finished());
    assert.deepEqual([decided[0].result, decided[0].reason], ['denied', 'device_revoked']);
    assert.throws(() => access.unlock('main', 'test'), /revoked/);
    assert.equal(relay('main').pulses.length, 0);
    assert.equal(store.audit.list(tenantId)[0].reason, 'device_revoked');
  });

  it('a denial by policy is logged with its reason', function () {
    events.emit('session.finished', finished({ doorId: 'lab', externalUserId: 'bob' }));
    assert.equal(relay('lab').pulses.length, 0);
    assert.deepEqual([decided[0].result, decided[0].reason], ['denied', 'not_in_group']);
    assert.equal(store.audit.list(tenantId)[0].reason, 'not_in_group');
  });

  it('a face+pin identification still meets the door policy; the event and the audit row say face+pin', function () {
    events.emit('session.finished', finished({ doorId: 'lab', externalUserId: 'bob', factor: 'face+pin' }));
    events.emit('session.finished', finished({ doorId: 'lab', externalUserId: 'alice', factor: 'face+pin', sessionId: 's-alice' }));
    assert.deepEqual(decided.map((e) => [e.result, e.reason, e.factor]), [['denied', 'not_in_group', 'face+pin'], ['granted', null, 'face+pin']]);
    assert.deepEqual(store.audit.list(tenantId).map((a) => a.factor), ['face+pin', 'face+pin']);
    assert.equal(relay('lab').pulses.length, 1);
  });

  it('PIN gate: failures of the factor lock a door after pin.max_failures in the window; policy denials and other doors do not count', async function () {
    const pinConfig = parseDeviceConfig({ ...config, pin: { max_failures: 2, window_seconds: 60, lockout_seconds: 30 } });
    let now = 1_000_000;
    const gate = new PinGate(pinConfig, tenantId, store.pins, store.audit, events, createLogger('silent'), () => now);
    try {
      const fail = (over: Partial<CoreEvents['session.finished']>) => events.emit('session.finished', finished({ status: 'fail', externalUserId: null, factor: 'face+pin', reason: 'not_identified', ...over }));
      fail({});
      now += 61_000; // the first failure leaves the window
      fail({ reason: 'not_in_group' }); // the PIN was right
      fail({ factor: 'face' }); // a face-only session
      fail({ doorId: 'lab' }); // another door
      fail({ reason: 'ambiguous_match' });
      assert.deepEqual(await gate.holders('main', '5831'), [], 'one failure in the window: not locked');
      fail({});
      await assert.rejects(gate.holders('main', '5831'), (e: { code: string; retryAfter: number }) => e.code === 'pin_locked' && e.retryAfter === 30);
      assert.deepEqual(await gate.holders('lab', '5831'), [], 'the other door is not locked');
      assert.deepEqual(alarms.map((a) => [a.doorId, a.type]), [['main', 'pin_lockout']]);
      now += 30_000;
      assert.deepEqual(await gate.holders('main', '5831'), [], 'the lockout ends');
    } finally {
      gate.close();
    }
  });

  it('the same person is not processed again within the cool-down', function () {
    events.emit('session.finished', finished());
    events.emit('session.finished', finished());
    assert.equal(relay('main').pulses.length, 1);
    assert.equal(decided.length, 1);
  });

  it('ignores sessions of other doors, other tenants and other flows', function () {
    events.emit('session.finished', finished({ doorId: null }));
    events.emit('session.finished', finished({ tenantId: 'other' }));
    events.emit('session.finished', finished({ flow: 'verify' }));
    events.emit('session.finished', finished({ doorId: 'nope' }));
    assert.equal(decided.length, 0);
  });

  it('remote unlock pulses and is announced; an unknown door is refused', function () {
    const e = access.unlock('main', 'test');
    assert.equal(e?.reason, 'remote_unlock');
    assert.equal(relay('main').pulses.length, 1);
    assert.equal(access.unlock('nope', 'test'), null);
  });

  it('the door announces itself locked at the end of the pulse, whatever the wall clock reads then', async function () {
    // a timer may fire a millisecond before Date.now() has moved on by the pulse, and a box without
    // a real-time clock steps its clock when NTP answers: neither may leave the lock shown unlocked
    const states: DoorStatus[] = [];
    events.on('door.state', (s) => s.doorId === 'main' && states.push(s));
    const realNow = Date.now;
    try {
      access.unlock('main', 'test');
      assert.equal(states.at(-1)?.lock, 'unlocked');
      Date.now = () => realNow() - 20;
      await new Promise((r) => setTimeout(r, 1500 + 100));
      assert.equal(states.at(-1)?.lock, 'locked', 'the last state announced');
      assert.equal(access.statuses().find((s) => s.doorId === 'main')?.lock, 'locked', 'the state asked for');
    } finally {
      Date.now = realNow;
    }
  });

  it('a door opened without a grant raises door_forced; a door left open raises door_held_open', async function () {
    const contact = access.door('main')!.contact as SimulatedContact;
    contact.set(true);
    assert.deepEqual(alarms.map((a) => a.type), ['door_forced']);
    await new Promise((r) => setTimeout(r, 1100));
    assert.deepEqual(alarms.map((a) => a.type), ['door_forced', 'door_held_open']);
    contact.set(false);
    // after a grant, opening is expected: no door_forced
    events.emit('session.finished', finished());
    contact.set(true);
    assert.equal(alarms.filter((a) => a.type === 'door_forced').length, 1);
    contact.set(false);
  });
});

describe('device install script', function () {
  it('is valid bash and, dry-run, installs the service, config, units, udev rule and tenant', async function () {
    const script = path.join(ROOT, 'scripts', 'install-device.sh');
    await run('bash', ['-n', script]);
    const { stdout } = await run('bash', [script, '--dry-run', '--config', path.join(ROOT, 'firmware-config', 'examples', 'raspberry-pi-5.yaml')]);
    for (const expected of ['apt-get install', 'fswebcam', 'useradd', 'npm ci', 'AUTHFACE_DEVICE_CONFIG=/etc/authface/device.yaml', 'AUTHFACE_KIOSK_URL=http://127.0.0.1:8080/kiosk?door=front', 'tenant create', 'authface.service', '99-authface-camera.rules', 'systemctl enable --now authface.service', 'doctor']) {
      assert.ok(stdout.includes(expected), `missing: ${expected}`);
    }
    await assert.rejects(run('bash', [script, '--dry-run']), /--config FILE is required/);
  });
});

describe('device thresholds', function () {
  it('a device file may override the match threshold for its service', async function () {
    const img = await photos();
    const device = await startTestDevice({ device_id: 'strict', thresholds: { match: 0.9999 }, doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { embedded: { port: 0 } } });
    try {
      const api = new Client(device.svc.url, device.apiKey);
      assert.equal((await api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
      const verify = await api.run('verify', thrice(img.personA[1]), { externalUserId: 'alice' });
      assert.equal(verify.result.reason, 'below_threshold');
      assert.ok((verify.result.score as number) > loadSettings({}).AUTHFACE_MATCH_THRESHOLD, 'a score the default threshold would have accepted');
    } finally {
      await device.close();
    }
  });
});
