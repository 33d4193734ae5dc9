import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { type CommandFields, generateCommandKeys, hasValidSignature, publicKeyFromBase64, signCommand } from '../../src/access/signed-command.ts';
import { authface } from '../support/cli.ts';
import { BROKER_USERS, type TestDevice, startTestDevice } from '../support/device.ts';
import { type OwnMosquitto, startMosquitto } from '../support/mosquitto.ts';
import { until } from '../support/mqtt.ts';

/**
 * Issue 7, section 1: nobody opens a door over MQTT without the right to. Each finding of the
 * review is reproduced against the embedded broker and against a real Mosquitto configured as
 * firmware-config/mosquitto ships it.
 */
describe('nobody opens a door over MQTT without the right to', function () {
  this.timeout(120_000);
  const keys = generateCommandKeys();
  const adminKey = crypto.createPrivateKey(keys.privatePem);

  describe('the signed command format', function () {
    const base: CommandFields = { command: 'unlock', device: 'front', door: 'main' };
    it('a signature covers the command, device, door, issue time and nonce', function () {
      const pub = publicKeyFromBase64(keys.publicKey);
      const signed = signCommand(adminKey, base);
      assert.ok(hasValidSignature(pub, signed));
      for (const change of [{ command: 'open_session' }, { device: 'back' }, { door: 'vault' }, { issued_at: new Date(0).toISOString() }, { nonce: crypto.randomBytes(16).toString('base64url') }, { request_id: 'x' }]) {
        assert.equal(hasValidSignature(pub, { ...signed, ...change } as typeof signed), false, JSON.stringify(change));
      }
      const other = crypto.generateKeyPairSync('ed25519').privateKey;
      assert.equal(hasValidSignature(pub, signCommand(other, base)), false, 'another key');
    });
  });

  /** The same attacks against each broker. */
  for (const kind of ['embedded', 'mosquitto'] as const) {
    describe(`on the ${kind === 'embedded' ? 'embedded broker' : 'real Mosquitto (firmware-config/mosquitto)'}`, function () {
      const deviceId = `cmd-${kind}-${process.pid}`;
      const base = `authface/${deviceId}`;
      let device: TestDevice;
      let mosquitto: OwnMosquitto | undefined;
      let url: string;
      const users = { admin: { username: 'admin', password: 'admin-password-for-tests' }, observer: { username: 'observer', password: 'observer-password-for-tests' } };
      const clients: MqttClient[] = [];

      before(async function () {
        const doors = ['main', 'side', 'gate'].map((id) => ({ id, relay: { driver: 'simulated', pulse_ms: 500 } }));
        const remote_commands = { enabled: true, public_key: keys.publicKey, unlocks_per_minute: 3 };
        if (kind === 'mosquitto') {
          const devicePassword = 'device-password-for-tests';
          mosquitto = await startMosquitto({ [deviceId]: devicePassword, admin: users.admin.password, observer: users.observer.password });
          url = mosquitto.url;
          const passwordFile = path.join(mosquitto.dir, 'device-password');
          fs.writeFileSync(passwordFile, devicePassword, { mode: 0o600 });
          device = await startTestDevice({ device_id: deviceId, doors, remote_commands, mqtt: { url, username: deviceId, password_file: passwordFile } });
        } else {
          assert.deepEqual(users, BROKER_USERS);
          device = await startTestDevice({ device_id: deviceId, doors, remote_commands, mqtt: { embedded: { port: 0 } } });
          url = device.svc.service.device!.broker!.url;
        }
        await until(() => device.svc.service.device!.mqttLink().state === 'connected', 10_000, 'the device on the broker');
      });
      afterEach(async function () {
        for (const c of clients.splice(0)) await c.endAsync(true).catch(() => undefined);
      });
      after(async function () {
        await device?.close();
        await mosquitto?.close();
      });

      const connect = async (options: IClientOptions) => {
        const c = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
        clients.push(c);
        return c;
      };
      const asAdmin = () => connect({ ...users.admin, clientId: `admin-${crypto.randomBytes(4).toString('hex')}` });
      const pulses = (door = 'main') => device.relay(door).pulses.length;
      const signed = (over: Partial<CommandFields> = {}) => JSON.stringify(signCommand(adminKey, { command: 'unlock', device: deviceId, door: 'main', ...over }));

      /**
       * Publishes as a fresh client of `user` and says whether the broker took it: the embedded
       * broker closes a client that publishes where it may not; Mosquitto drops the message.
       */
      async function attempt(user: { username: string; password: string }, topic: string, payload: string, retain = false): Promise<'closed' | 'acknowledged'> {
        const c = await connect({ ...user, clientId: `${user.username}-${crypto.randomBytes(4).toString('hex')}` });
        const closed = new Promise<'closed'>((r) => c.once('close', () => r('closed')));
        const result = await Promise.race([c.publishAsync(topic, payload, { qos: 1, retain }).then(() => 'acknowledged' as const), closed]);
        await c.endAsync(true);
        return result;
      }

      /** Everything sent before by this admin has been handled once the reply to a marker command is in. */
      async function sync(admin: MqttClient): Promise<void> {
        const id = crypto.randomUUID();
        const replies: string[] = [];
        admin.on('message', (_t, p) => replies.push(p.toString()));
        await admin.subscribeAsync(`${base}/command/result`, { qos: 1 });
        await admin.publishAsync(`${base}/command`, signed({ door: 'side', request_id: id }), { qos: 1 });
        await until(() => replies.some((r) => JSON.parse(r).request_id === id), 10_000, 'the marker reply');
      }

      it('an anonymous client cannot connect, so it opens nothing (finding: five unlocks, five openings)', async function () {
        await assert.rejects(mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000 }), /Not authorized|Bad username or password/);
        await assert.rejects(mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000, username: 'admin', password: 'wrong password!' }), /Not authorized|Bad username or password/);
        assert.equal(pulses(), 0);
      });

      it('an observer cannot publish a command or a fake access event (finding: fake events)', async function () {
        const observer = await connect({ ...users.observer, clientId: 'observer-reads' });
        await observer.subscribeAsync(`${base}/door/+/access`, { qos: 1 }); // reading is allowed
        await observer.endAsync();
        // (on Mosquitto a user has one session at a time: the reader here is an admin)
        const reader = await asAdmin();
        const seen: { topic: string; payload: string }[] = [];
        reader.on('message', (topic, p) => seen.push({ topic, payload: p.toString() }));
        await reader.subscribeAsync(`${base}/door/+/access`, { qos: 1 });
        const refused = kind === 'embedded' ? 'closed' : 'acknowledged';
        assert.equal(await attempt(users.observer, `${base}/command`, signed()), refused);
        assert.equal(await attempt(users.observer, `${base}/door/main/access`, JSON.stringify({ result: 'granted', external_user_id: 'fake' })), refused);
        await sync(reader);
        // the marker's own (real) access event arrives; the fake one never does
        await until(() => seen.some((m) => m.topic.endsWith('/door/side/access')), 10_000, 'the real access event');
        assert.ok(!seen.some((m) => m.payload.includes('fake')), 'a fake access event was relayed');
        assert.equal(pulses(), 0);
      });

      it('an unsigned unlock, or one signed by another key, opens nothing', async function () {
        const admin = await asAdmin();
        await admin.publishAsync(`${base}/command`, JSON.stringify({ command: 'unlock', door: 'main' }), { qos: 1 });
        const forged = signCommand(crypto.generateKeyPairSync('ed25519').privateKey, { command: 'unlock', device: deviceId, door: 'main' });
        await admin.publishAsync(`${base}/command`, JSON.stringify(forged), { qos: 1 });
        await sync(admin);
        assert.equal(pulses(), 0);
      });

      it('a signed fresh unlock opens once, and its replay opens nothing (also after a restart)', async function () {
        const admin = await asAdmin();
        const command = signed();
        await admin.publishAsync(`${base}/command`, command, { qos: 1 });
        await sync(admin);
        assert.equal(pulses(), 1);
        await admin.publishAsync(`${base}/command`, command, { qos: 1 });
        await sync(admin);
        assert.equal(pulses(), 1, 'replayed');
        await device.restart();
        await until(() => device.svc.service.device!.mqttLink().state === 'connected', 10_000, 'the device back on the broker');
        if (kind === 'embedded') url = device.svc.service.device!.broker!.url;
        const again = await asAdmin();
        await again.publishAsync(`${base}/command`, command, { qos: 1 });
        await sync(again);
        assert.equal(pulses(), 0, 'replayed after a restart (the new relay counts from zero)');
      });

      it('a stale unlock (issued 60 s ago) and one from the future open nothing', async function () {
        const admin = await asAdmin();
        const before = pulses();
        await admin.publishAsync(`${base}/command`, signed({ issued_at: new Date(Date.now() - 60_000).toISOString() }), { qos: 1 });
        await admin.publishAsync(`${base}/command`, signed({ issued_at: new Date(Date.now() + 60_000).toISOString() }), { qos: 1 });
        await sync(admin);
        assert.equal(pulses(), before);
      });

      it('a retained unlock opens nothing, neither at once nor at the next start (finding: obeyed at every start)', async function () {
        const before = pulses();
        // the old unsigned format of the finding, and a signed fresh one, both retained; the
        // embedded broker refuses retained commands outright, Mosquitto keeps them
        const kept = kind === 'embedded' ? 'closed' : 'acknowledged';
        assert.equal(await attempt(users.admin, `${base}/command`, JSON.stringify({ command: 'unlock', door: 'main' }), true), kept);
        assert.equal(await attempt(users.admin, `${base}/command`, signed(), true), kept);
        await sync(await asAdmin());
        assert.equal(pulses(), before);
        await device.restart();
        await until(() => device.svc.service.device!.mqttLink().state === 'connected', 10_000, 'the device back on the broker');
        if (kind === 'embedded') url = device.svc.service.device!.broker!.url;
        await sync(await asAdmin());
        assert.equal(pulses(), 0);
        if (kind === 'mosquitto') await attempt(users.admin, `${base}/command`, '', true); // clears the retained message
      });

      it("a client taking the device's predictable client id does not throw the device off the broker", async function () {
        const since = device.svc.service.device!.mqttLink().since;
        const taker = await connect({ ...users.admin, clientId: `authface-${deviceId}` }).catch((e: Error) => e);
        if (kind === 'embedded') assert.match(String(taker), /Identifier rejected/, 'a client id belongs to its user');
        await sync(await asAdmin());
        const link = device.svc.service.device!.mqttLink();
        assert.deepEqual([link.state, link.since], ['connected', since]);
      });

      it('unlocks are rate-limited per door', async function () {
        const admin = await asAdmin();
        const replies: { request_id: string | null; ok: boolean; error?: string }[] = [];
        admin.on('message', (_t, p) => replies.push(JSON.parse(p.toString())));
        await admin.subscribeAsync(`${base}/command/result`, { qos: 1 });
        for (let i = 0; i < 5; i++) await admin.publishAsync(`${base}/command`, signed({ door: 'gate', request_id: `g${i}` }), { qos: 1 });
        const gate = () => replies.filter((r) => r.request_id?.startsWith('g'));
        await until(() => gate().length === 5, 10_000, 'five replies');
        assert.equal(pulses('gate'), 3);
        assert.deepEqual(gate().map((r) => r.error ?? 'ok'), ['ok', 'ok', 'ok', 'rate_limited', 'rate_limited']);
      });
    });
  }

  describe('the embedded broker', function () {
    let device: TestDevice;
    before(async function () {
      device = await startTestDevice({ device_id: 'plain-door', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { embedded: { port: 0 } } });
    });
    after(async () => device?.close());

    it('remote unlock is off unless the device file turns it on', async function () {
      const url = device.svc.service.device!.broker!.url;
      assert.equal(device.svc.service.device!.commands.enabled, false);
      const admin = await mqtt.connectAsync(url, { reconnectPeriod: 0, ...BROKER_USERS.admin, clientId: 'admin-off' });
      await admin.publishAsync('authface/plain-door/command', JSON.stringify(signCommand(adminKey, { command: 'unlock', device: 'plain-door', door: 'main' })), { qos: 1 });
      await new Promise((r) => setTimeout(r, 500));
      await admin.endAsync();
      assert.equal(device.relay('main').pulses.length, 0);
      assert.match(device.svc.logs(), /"remote_commands":false/);
    });

    it('refuses a packet above its size limit before buffering it (finding: three retained 64 MB messages, +357 MB)', async function () {
      const { port } = new URL(device.svc.service.device!.broker!.url);
      const socket = net.connect(Number(port), '127.0.0.1');
      await new Promise((r) => socket.once('connect', r));
      socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'admin-big', keepalive: 30, username: 'admin', password: Buffer.from(BROKER_USERS.admin.password) }));
      await new Promise((r) => socket.once('data', r)); // CONNACK
      // a retained PUBLISH whose header announces a 64 MB payload; then the payload, streamed until the broker hangs up
      const payloadBytes = 64 * 1024 * 1024;
      const topic = Buffer.from('authface/plain-door/status');
      let remaining = 2 + topic.length + payloadBytes;
      const length: number[] = [];
      do {
        length.push((remaining % 128) | (remaining >= 128 ? 0x80 : 0));
        remaining = Math.floor(remaining / 128);
      } while (remaining > 0);
      const announce = Buffer.concat([Buffer.from([0x31, ...length, topic.length >> 8, topic.length & 0xff]), topic]);
      let sent = 0;
      const closed = new Promise((r) => socket.once('close', r));
      socket.on('error', () => undefined);
      socket.write(announce);
      const chunk = Buffer.alloc(256 * 1024, 0x41);
      while (!socket.destroyed && sent < payloadBytes) {
        if (!socket.write(chunk)) await Promise.race([new Promise((r) => socket.once('drain', r)), closed]);
        sent += chunk.length;
      }
      await closed;
      assert.ok(sent < 8 * 1024 * 1024, `the broker read ${sent} bytes before closing`);
      // nothing was retained
      const observer = await mqtt.connectAsync(device.svc.service.device!.broker!.url, { reconnectPeriod: 0, ...BROKER_USERS.observer, clientId: 'observer-big' });
      const got: number[] = [];
      observer.on('message', (_t, p) => got.push(p.length));
      await observer.subscribeAsync('authface/plain-door/status', { qos: 1 });
      await new Promise((r) => setTimeout(r, 300));
      await observer.endAsync();
      assert.ok(got.every((n) => n < 1000), `a retained message of ${Math.max(...got)} bytes`);
      assert.match(device.svc.logs(), /packet too large/);
    });
  });

  describe('the admin commands', function () {
    it('command keygen, then unlock --door with the key file opens the door once and prints the reply', async function () {
      const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'authface-keys-'));
      let device: TestDevice | undefined;
      try {
        const keyFile = path.join(dir, 'admin.key');
        const generated = JSON.parse((await authface(['command', 'keygen', '--out', keyFile], {})).stdout) as { public_key: string };
        assert.equal((fs.statSync(keyFile).mode & 0o777).toString(8), '600');
        device = await startTestDevice({ device_id: 'cli-door', doors: [{ id: 'main', relay: { driver: 'simulated' } }], remote_commands: { enabled: true, public_key: generated.public_key }, mqtt: { embedded: { port: 0 } } });
        const passwordFile = path.join(dir, 'password');
        fs.writeFileSync(passwordFile, BROKER_USERS.admin.password, { mode: 0o600 });
        const url = device.svc.service.device!.broker!.url;
        const out = await authface(['unlock', '--door', 'main', '--device', 'cli-door', '--key', keyFile, '--url', url, '--username', 'admin', '--password-file', passwordFile], {});
        assert.equal(JSON.parse(out.stdout).ok, true);
        assert.equal(device.relay('main').pulses.length, 1);
        const printed = JSON.parse((await authface(['command', 'sign', '--key', keyFile, '--device', 'cli-door', '--door', 'main'], {})).stdout);
        assert.ok(hasValidSignature(publicKeyFromBase64(generated.public_key), printed));
      } finally {
        await device?.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
