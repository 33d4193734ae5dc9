import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import mqtt from 'mqtt';
import { loadSettings } from '../src/config/settings.ts';
import { type CommandFields, generateCommandKeys, signCommand } from '../src/access/signed-command.ts';
import { stringify } from 'yaml';
import { Client } from './support/client.ts';
import { ROOT } from './support/datasets.ts';
import { type TestDevice, startTestDevice } from './support/device.ts';
import { listen, testBroker, until } from './support/mqtt.ts';
import { type Photos, photos, thrice } from './support/photos.ts';

/** MQTT against the real Mosquitto on 127.0.0.1:1883 (the shared one, anonymous: the device's own checks are what is tested). */
describe('MQTT: access events, device status with last will, commands', function () {
  let broker: Awaited<ReturnType<typeof testBroker>>;
  let device: TestDevice;
  let img: Photos;
  const deviceId = `mqtt-test-${process.pid}`;
  const base = `authface/${deviceId}`;
  const keys = generateCommandKeys();
  const signed = (fields: Omit<CommandFields, 'device'>) => JSON.stringify(signCommand(crypto.createPrivateKey(keys.privatePem), { device: deviceId, ...fields }));

  before(async function () {
    broker = await testBroker();
    console.log(`      (broker: ${broker.kind} ${broker.url})`);
    img = await photos();
    device = await startTestDevice({
      device_id: deviceId,
      liveness: 'passive',
      kiosk: { cooldown_seconds: 0 },
      doors: [
        { id: 'main', relay: { driver: 'simulated', pulse_ms: 2500 } },
        { id: 'back', relay: { driver: 'simulated', pulse_ms: 1000 } },
      ],
      mqtt: { url: broker.url },
      remote_commands: { enabled: true, public_key: keys.publicKey },
    });
    const api = new Client(device.svc.url, device.apiKey);
    assert.equal((await api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' })).result.status, 'success');
  });
  after(async function () {
    await device?.close();
    // leave no retained status behind on a shared broker
    const c = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 });
    await c.publishAsync(`${base}/status`, '', { retain: true });
    await c.endAsync();
    await broker?.close();
  });

  /** A kiosk identify session at a door, driven through the capture API with one photo. */
  async function identifyAtDoor(door: string, photo: Buffer) {
    const { token, clientState } = await device.svc.service.device!.kiosk.startIdentify(door);
    const capture = new Client(device.svc.url, '').capture(token);
    await capture.session();
    for (let i = 0; i < 3; i++) await capture.frame(photo);
    await capture.complete();
    return clientState;
  }

  it('publishes a retained online status', async function () {
    const sub = await listen(broker.url, [`${base}/status`]);
    try {
      await until(() => sub.messages.length > 0, 5000, 'status');
      const status = JSON.parse(sub.messages[0].payload);
      assert.equal(sub.messages[0].retain, true);
      assert.equal(status.state, 'online');
      assert.deepEqual(status.doors, ['main', 'back']);
    } finally {
      await sub.close();
    }
  });

  it('publishes every access decision on its door topic, with ids and decisions only', async function () {
    const sub = await listen(broker.url, [`${base}/door/+/access`]);
    try {
      await identifyAtDoor('main', img.personA[1]);
      await identifyAtDoor('back', img.personC);
      await until(() => sub.messages.length >= 2, 10_000, 'two access events');
      const [granted, denied] = sub.messages.map((m) => ({ topic: m.topic, body: JSON.parse(m.payload) }));
      assert.equal(granted.topic, `${base}/door/main/access`);
      assert.deepEqual(Object.keys(granted.body).sort(), ['device_id', 'door_id', 'event_id', 'external_user_id', 'factor', 'reason', 'result', 'score', 'time']);
      assert.deepEqual([granted.body.result, granted.body.factor], ['granted', 'face']);
      assert.equal(granted.body.external_user_id, 'alice');
      assert.equal(granted.body.device_id, deviceId);
      assert.match(granted.body.event_id, /^evt_/);
      assert.ok(granted.body.score >= loadSettings({}).AUTHFACE_MATCH_THRESHOLD);
      assert.equal(denied.topic, `${base}/door/back/access`);
      assert.deepEqual([denied.body.result, denied.body.reason, denied.body.external_user_id], ['denied', 'not_identified', null]);
      assert.deepEqual(device.relay('main').pulses.map((p) => p.ms), [2500]);
      assert.equal(device.relay('back').pulses.length, 0);
      const raw = sub.messages.map((m) => m.payload).join('\n');
      assert.ok(!/embedding|\/9j\/|iVBOR/.test(raw));
    } finally {
      await sub.close();
    }
  });

  it('opens a door on a valid unlock command and answers on command/result', async function () {
    const sub = await listen(broker.url, [`${base}/command/result`, `${base}/door/back/access`]);
    const before = device.relay('back').pulses.length;
    try {
      await sub.client.publishAsync(`${base}/command`, signed({ command: 'unlock', door: 'back', request_id: 'r-1' }), { qos: 1 });
      await until(() => device.relay('back').pulses.length === before + 1, 5000, 'the relay');
      await until(() => sub.messages.length >= 2, 5000, 'the reply and the access event');
      const reply = JSON.parse(sub.messages.find((m) => m.topic.endsWith('/command/result'))!.payload);
      assert.deepEqual(reply, { request_id: 'r-1', command: 'unlock', door: 'back', ok: true });
      const event = JSON.parse(sub.messages.find((m) => m.topic.endsWith('/access'))!.payload);
      assert.deepEqual([event.result, event.reason], ['granted', 'remote_unlock']);
    } finally {
      await sub.close();
    }
  });

  it('logs and ignores malformed and unknown commands, and keeps running', async function () {
    const sub = await listen(broker.url, [`${base}/command/result`]);
    const pulses = () => device.relay('main').pulses.length + device.relay('back').pulses.length;
    const before = pulses();
    try {
      const good = JSON.parse(signed({ command: 'unlock', door: 'main' }));
      for (const payload of ['not json', '[]', '{}', '{"command":"explode","door":"main"}', '{"command":"unlock"}', '{"command":"unlock","door":7}', JSON.stringify({ ...good, extra: 1 }), JSON.stringify({ ...good, command: 'explode' }), Buffer.alloc(70_000, 0x7b).toString()]) {
        await sub.client.publishAsync(`${base}/command`, payload, { qos: 1 });
      }
      await sub.client.publishAsync(`${base}/command`, signed({ command: 'unlock', door: 'cellar', request_id: 'r-2' }), { qos: 1 });
      await until(() => sub.messages.length >= 1, 5000, 'the reply for the unknown door');
      assert.deepEqual(JSON.parse(sub.messages[0].payload), { request_id: 'r-2', command: 'unlock', door: 'cellar', ok: false, error: 'unknown door' });
      assert.equal(pulses(), before, 'nothing opened');
      assert.match(device.svc.logs(), /"refused":"malformed".*remote command refused/);
      assert.equal((await fetch(`${device.svc.url}/healthz`)).status, 200);
    } finally {
      await sub.close();
    }
  });

  it('open_session only accepts an open enroll/update session of this device', async function () {
    const sub = await listen(broker.url, [`${base}/command/result`]);
    try {
      const api = new Client(device.svc.url, device.apiKey);
      const enroll = await api.start('enroll', { externalUserId: 'dave' });
      const verify = await api.start('verify', { externalUserId: 'alice' });
      const send = (body: Omit<CommandFields, 'device'>) => sub.client.publishAsync(`${base}/command`, signed(body), { qos: 1 });
      await send({ command: 'open_session', door: 'main', biometry_url: enroll.biometryUrl, request_id: 'ok' });
      await send({ command: 'open_session', door: 'main', biometry_url: verify.biometryUrl, request_id: 'wrong-flow' });
      await send({ command: 'open_session', door: 'main', biometry_url: 'https://evil.example.com/capture?t=abc', request_id: 'foreign' });
      await until(() => sub.messages.length >= 3, 5000, 'three replies');
      const replies = Object.fromEntries(sub.messages.map((m) => JSON.parse(m.payload)).map((r) => [r.request_id, r.ok]));
      assert.deepEqual(replies, { ok: true, 'wrong-flow': false, foreign: false });
    } finally {
      await sub.close();
    }
  });

  it('the last will marks the device offline when it stops abruptly', async function () {
    this.timeout(60_000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-lwt-'));
    const id = `lwt-test-${process.pid}`;
    fs.writeFileSync(path.join(dir, 'device.yaml'), stringify({ device_id: id, doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { url: broker.url } }));
    const sub = await listen(broker.url, [`authface/${id}/status`]);
    const state = (payload: string) => (payload ? JSON.parse(payload).state : null);
    let child: ChildProcess | undefined;
    try {
      child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli/main.ts'), 'serve'], {
        cwd: ROOT,
        env: { ...process.env, PORT: '0', AUTHFACE_DATA_DIR: path.join(dir, 'data'), AUTHFACE_DEVICE_CONFIG: path.join(dir, 'device.yaml'), LOG_LEVEL: 'warn' },
        stdio: 'ignore',
      });
      await until(() => sub.messages.some((m) => state(m.payload) === 'online'), 40_000, 'online');
      child.kill('SIGKILL'); // no clean disconnect: only the broker's last will can say offline
      await until(() => sub.messages.some((m) => state(m.payload) === 'offline'), 10_000, 'the last will');
      // and it is retained: a late subscriber sees offline too
      const late = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 });
      const seen: string[] = [];
      late.on('message', (_t, p) => seen.push(state(p.toString())));
      await late.subscribeAsync(`authface/${id}/status`, { qos: 1 });
      await until(() => seen.length > 0, 5000, 'the retained status');
      assert.equal(seen[0], 'offline');
      late.removeAllListeners('message');
      await late.publishAsync(`authface/${id}/status`, '', { retain: true }); // leave the broker clean
      await late.endAsync();
    } finally {
      child?.kill('SIGKILL');
      await sub.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
