import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { normalize } from '../../src/biometrics/embedding.ts';
import { readableLine } from '../../src/core/logger.ts';
import { openStore } from '../../src/store/index.ts';
import { assertOneLine, authface, CLI, refusal, run, serve, stop } from '../support/cli.ts';
import { Client } from '../support/client.ts';
import { ROOT } from '../support/datasets.ts';
import { kioskHeaders, startTestDevice } from '../support/device.ts';
import { freePort } from '../support/mosquitto.ts';
import { type Photos, photos } from '../support/photos.ts';
import { type TestService, startTestService } from '../support/service.ts';
import { FLEET_MODEL } from '../../src/sync/fleet-model.ts';

/** Issue 7, section 7: the first hour of a new operator. */
describe('the first hour of a new operator', function () {
  this.timeout(180_000);
  let img: Photos;
  let dataDir: string;
  before(async () => (img = await photos()));
  beforeEach(() => (dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-hour-'))));
  afterEach(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  describe('start failures are one line saying what is wrong and how to fix it', function () {
    it('the port is in use', async function () {
      const port = await freePort();
      const taken = net.createServer().listen(port, '127.0.0.1');
      try {
        assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: dataDir, PORT: String(port) }), new RegExp(`port ${port} on 127\\.0\\.0\\.1 is in use.*set PORT`));
      } finally {
        taken.close();
      }
    });

    it('a hub with no AUTHFACE_HUB_BROKER_ACL (issue 18: it starts on a broker without per-device rights only when told)', async function () {
      const r = await refusal(['hub', 'serve', '--database-url', 'postgres://127.0.0.1/none', '--broker-url', 'mqtt://127.0.0.1:1'], { AUTHFACE_DATA_DIR: dataDir, AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex') });
      assertOneLine(r, /AUTHFACE_HUB_BROKER_ACL is not set: set mosquitto-dynsec .*firmware-config\/mosquitto\/dynsec\.conf.*or none for a broker without per-device rights, where any client reads every tenant's log/);
    });

    it('a malformed AUTHFACE_MASTER_KEY (which `authface config` accepted)', async function () {
      for (const command of [['serve'], ['config']]) {
        assertOneLine(await refusal(command, { AUTHFACE_DATA_DIR: dataDir, AUTHFACE_MASTER_KEY: 'secret' }), /AUTHFACE_MASTER_KEY: .*64 hex or 44 base64/);
      }
    });

    it('a key that does not open the existing data (which doctor passed)', async function () {
      const store = openStore(dataDir, undefined);
      const t = store.tenants.create({ name: 'default', allowedOrigins: ['https://a.example'], livenessMode: 'passive' });
      store.users.enroll(t.id, 'alice', { [FLEET_MODEL]: normalize(Float32Array.from({ length: 128 }, () => Math.random() - 0.5)) });
      store.close();
      const wrong = crypto.randomBytes(32).toString('hex');
      assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: dataDir, AUTHFACE_MASTER_KEY: wrong }), /the master key does not open this database/);
      const doctor = await refusal(['doctor'], { AUTHFACE_DATA_DIR: dataDir, AUTHFACE_MASTER_KEY: wrong });
      assert.equal(doctor.code, 1);
    });

    it('the Jetson example on a machine without GPIO: driver gpio names its key; driver auto falls back', async function () {
      const example = path.join(ROOT, 'firmware-config', 'examples', 'jetson-orin-nano.yaml');
      assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: dataDir, AUTHFACE_DEVICE_CONFIG: example }), /doors\.0\.relay\.driver is gpio, but this machine exposes no GPIO lines.*driver: auto/);
      const auto = path.join(dataDir, 'auto.yaml');
      fs.writeFileSync(auto, fs.readFileSync(example, 'utf8').replaceAll('driver: gpio', 'driver: auto'));
      const running = await serve({ AUTHFACE_DATA_DIR: path.join(dataDir, 'data'), AUTHFACE_DEVICE_CONFIG: auto });
      try {
        assert.match(running.output(), /door relays set to off/);
      } finally {
        await stop(running.child);
      }
    });
  });

  describe('the README commands run at once and change nothing', function () {
    const watched = ['dist/cli/main.js', 'dist/.built', 'models/human/blazeface.json'].map((f) => path.join(ROOT, f));
    const version = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version as string;
    const times = () => watched.map((f) => fs.statSync(f).mtimeMs);

    it('`npx authface --version` in the project: no rebuild, no copied models (finding: dist/ deleted and rebuilt, 23-30 s)', async function () {
      if (!watched.every((f) => fs.existsSync(f))) this.skip(); // not installed with npm install
      await run(process.execPath, [path.join(ROOT, 'scripts', 'build.mjs')]); // as npm install left it (a no-op unless src/ changed since)
      const before = times();
      const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-npx-cache-'));
      try {
        // a fresh npx cache: npx links the project into it and runs its install scripts, which
        // find dist/ and models/ up to date, say nothing and change nothing
        for (let i = 0; i < 2; i++) {
          const out = await run('npx', ['--yes', 'authface', '--version'], { cwd: ROOT, env: { ...process.env, npm_config_cache: cache } });
          assert.equal(out.stdout.trim(), version, "only the command's own output");
        }
        assert.deepEqual(times(), before, 'dist/ and models/ are untouched');
      } finally {
        fs.rmSync(cache, { recursive: true, force: true });
      }
    });
  });

  describe('the CLI shows what it made', function () {
    const env = () => ({ AUTHFACE_DATA_DIR: dataDir });
    const json = async (args: string[]) => JSON.parse((await authface(args, env())).stdout);

    it('tenant create refuses an origin that can never be used and requires one; tenant list, show, update and key list', async function () {
      assertOneLine(await refusal(['tenant', 'create', '--name', 'Shop'], env()), /at least one --allowed-origin/);
      const http = await refusal(['tenant', 'create', '--name', 'Shop', '--allowed-origin', 'http://shop.example.com'], env());
      assert.notEqual(http.code, 0);
      assert.match(http.stderr, /can never be used: redirect_url must use https/);
      const created = await json(['tenant', 'create', '--name', 'Shop', '--allowed-origin', 'https://shop.example.com', '--allowed-origin', 'http://localhost:*']);
      const list = await json(['tenant', 'list']);
      assert.deepEqual(list.map((t: { name: string }) => t.name), ['Shop']);
      assert.deepEqual(list[0].allowed_origins, ['https://shop.example.com', 'http://localhost:*']);
      assert.equal(list[0].liveness, 'active');
      const updated = await json(['tenant', 'update', '--tenant', 'Shop', '--allowed-origin', 'https://app.shop.example.com', '--liveness', 'passive']);
      assert.deepEqual([updated.allowed_origins, updated.liveness], [['https://app.shop.example.com'], 'passive']);
      const shown = await json(['tenant', 'show', '--tenant', created.tenant_id]);
      assert.equal(shown.liveness, 'passive');
      assert.deepEqual(shown.keys.map((k: { key_id: string }) => k.key_id), [created.key_id]);
      const keys = await json(['key', 'list', '--tenant', created.tenant_id]);
      assert.deepEqual(Object.keys(keys[0]).sort(), ['created_at', 'key_id', 'revoked_at']);
      assert.ok(!JSON.stringify(keys).includes(created.api_key), 'a key is shown only when it is created');
    });

    it('run from another directory, the CLI uses the data directory the service uses, says which, and creates nothing', async function () {
      const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-cwd-'));
      const existed = fs.existsSync(path.join(ROOT, 'data'));
      const withoutDataDir = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'AUTHFACE_DATA_DIR'));
      try {
        const r = await run(process.execPath, [...CLI, 'tenant', 'list'], { cwd: elsewhere, env: withoutDataDir }).then(
          (x) => x.stderr,
          (e: { stderr: string }) => e.stderr,
        );
        assert.match(r, new RegExp(`data directory ${path.join(ROOT, 'data').replace(/[/.]/g, '\\$&')}`));
        assert.deepEqual(fs.readdirSync(elsewhere), []);
        assert.equal(fs.existsSync(path.join(ROOT, 'data')), existed);
      } finally {
        fs.rmSync(elsewhere, { recursive: true, force: true });
      }
    });
  });

  it("the default tenant's origins accept a local app on any port, on localhost and 127.0.0.1 (finding: http://localhost:3000 refused)", async function () {
    const svc = await serve({ AUTHFACE_DATA_DIR: dataDir });
    try {
      const key = /afk_\S+/.exec(fs.readFileSync(path.join(dataDir, 'first-start-api-key'), 'utf8'))?.[0] as string;
      const api = new Client(svc.url, key);
      for (const redirect of ['http://localhost:3000/callback', 'http://127.0.0.1/done', 'http://[::1]:8000/cb', 'http://localhost/done']) {
        const r = await api.post('/biometry/v1/identify', { client_state: crypto.randomUUID(), redirect_url: redirect });
        assert.equal(r.status, 200, `${redirect}: ${JSON.stringify(r.body)}`);
      }
      const remote = await api.post('/biometry/v1/identify', { client_state: crypto.randomUUID(), redirect_url: 'https://app.example.com/cb' });
      assert.match((remote.body.error as { message: string }).message, /authface tenant update --allowed-origin/);
    } finally {
      await stop(svc.child);
    }
  });

  describe('validation messages say what is wrong', function () {
    let svc: TestService;
    let api: Client;
    before(async function () {
      svc = await startTestService();
      api = new Client(svc.url, svc.tenant().apiKey);
    });
    after(() => svc?.close());
    const message = async (route: string, body: unknown) => {
      const r = await api.post(`/biometry/v1/${route}`, body);
      assert.equal(r.status, 400);
      return (r.body.error as { message: string }).message;
    };

    it('limit 1001 is too large (not "must be an integer"); a wrong type is not "required"; [] is not an object', async function () {
      assert.equal(await message('list-users', { limit: 1001 }), 'limit must be at most 1000');
      assert.equal(await message('list-users', { limit: 0 }), 'limit must be at least 1');
      assert.equal(await message('list-users', { limit: 'ten' }), 'limit must be an integer');
      assert.equal(await message('get-user', { external_user_id: 5 }), 'external_user_id must be a string');
      assert.equal(await message('get-user', {}), 'external_user_id is required');
      assert.equal(await message('get-user', []), 'the body must be a JSON object');
      assert.equal(await message('get-user', '"alice"'), 'the body must be a JSON object');
    });

    it('OpenAPI marks limit and offset optional and its summaries read well', async function () {
      const doc = (await (await fetch(`${svc.url}/openapi.json`)).json()) as {
        paths: Record<string, { post?: { summary: string } }>;
        components: { schemas: Record<string, { required?: string[] }> };
      };
      assert.equal(doc.components.schemas.ListUsersRequest.required, undefined);
      for (const p of Object.values(doc.paths)) if (p.post) assert.doesNotMatch(p.post.summary, /\ba (enrol|identif|update|[aeio])/i, p.post.summary);
    });

    it('the capture contract is one thing: a decision needs frames.required usable frames; fewer fail with not_enough_frames', async function () {
      const { clientState, token } = await api.start('identify');
      const capture = api.capture(token);
      const view = (await capture.session()).body as { frames: { required: number } };
      assert.equal(view.frames.required, 3);
      assert.equal((await capture.frame(img.personB)).body.accepted, true);
      const done = await capture.complete();
      assert.deepEqual([done.body.status, done.body.reason], ['fail', 'not_enough_frames']);
      assert.equal((await api.result(clientState)).body.reason, 'not_enough_frames');
    });

    it('a 4xx leaves a trace in the request log (method, route, status, ms), without key or token', async function () {
      const { token } = await api.start('identify');
      await api.capture(token).frame(Buffer.from('not an image'));
      await message('list-users', { limit: 1001 });
      const lines = svc.logs().split('\n').filter((l) => l.includes('"msg":"request"')).map((l) => JSON.parse(l) as Record<string, unknown>);
      const refused = lines.find((l) => l.route === '/biometry/v1/list-users' && l.status === 400);
      assert.ok(refused, 'the 400 is logged');
      assert.equal(refused.error, 'validation_error');
      assert.equal(typeof refused.ms, 'number');
      assert.ok(lines.some((l) => l.route === '/capture/v1/frames' && l.status === 415));
      assert.ok(!svc.logs().includes(token) && !svc.logs().includes(api.apiKey));
    });
  });

  it('logs are readable on a terminal', function () {
    const line = readableLine(JSON.stringify({ level: 40, time: Date.parse('2026-11-26T14:05:09Z'), service: 'authface', msg: 'MQTT error', problem: 'connection refused', state: 2 }));
    assert.match(line, /^\d\d:\d\d:\d\d WARN {2}MQTT error {2}problem="connection refused" state=2$/);
  });

  describe('a device shows what is wrong with its broker link', function () {
    it('the embedded broker cannot listen: /readyz, the device status and doctor say so, and the doors still work', async function () {
      const port = await freePort();
      const taken = net.createServer().listen(port, '127.0.0.1');
      const device = await startTestDevice({ device_id: 'no-broker', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { embedded: { port } } });
      try {
        const ready = (await (await fetch(`${device.svc.url}/readyz`)).json()) as { checks: { mqtt: { state: string; error: string } } };
        assert.equal(ready.checks.mqtt.state, 'unavailable');
        assert.match(ready.checks.mqtt.error, /cannot listen on 127\.0\.0\.1:\d+: the port is in use/);
        const status = await fetch(`${device.svc.url}/device/v1/status`, { headers: { authorization: `Bearer ${device.apiKey}` } });
        assert.equal(((await status.json()) as { mqtt: { state: string } }).mqtt.state, 'unavailable');
        assert.equal((await fetch(`${device.svc.url}/kiosk/v1/doors/main`, { headers: kioskHeaders(device) })).status, 200);
        await device.svc.close(); // doctor runs while the service is stopped: the port is still taken
        const doctor = await refusal(['doctor'], { AUTHFACE_DATA_DIR: device.svc.dataDir, AUTHFACE_DEVICE_CONFIG: path.join(device.dir, 'device.yaml') });
        assert.match(doctor.stderr + (await authface(['doctor'], { AUTHFACE_DATA_DIR: device.svc.dataDir, AUTHFACE_DEVICE_CONFIG: path.join(device.dir, 'device.yaml') }).catch((e: { stdout: string }) => e)).stdout, /✗ broker +the embedded broker's port 127\.0\.0\.1:\d+ is taken/);
      } finally {
        taken.close();
        fs.rmSync(device.dir, { recursive: true, force: true });
      }
    });

    it('a missing broker password file: /readyz and doctor name the file', async function () {
      const device = await startTestDevice({ device_id: 'no-password', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { url: 'mqtt://127.0.0.1:1883', username: 'x', password_file: '/nonexistent/mqtt-password' } });
      try {
        const ready = (await (await fetch(`${device.svc.url}/readyz`)).json()) as { checks: { mqtt: { state: string; error: string } } };
        assert.equal(ready.checks.mqtt.state, 'unavailable');
        assert.match(ready.checks.mqtt.error, /mqtt\.password_file \/nonexistent\/mqtt-password cannot be read/);
        const doctor = await authface(['doctor'], { AUTHFACE_DATA_DIR: device.svc.dataDir, AUTHFACE_DEVICE_CONFIG: path.join(device.dir, 'device.yaml') }).catch((e: { stdout: string }) => e);
        assert.match(doctor.stdout, /✗ broker .*password_file \/nonexistent\/mqtt-password cannot be read/);
      } finally {
        await device.close();
      }
    });
  });

  it('doctor does not fail the camera of a kiosk-only device (no camera section)', async function () {
    const file = path.join(dataDir, 'kiosk-only.yaml');
    fs.writeFileSync(file, stringify({ device_id: 'front', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { embedded: { port: await freePort() } } }));
    const out = await authface(['doctor'], { AUTHFACE_DATA_DIR: dataDir, AUTHFACE_DEVICE_CONFIG: file }).catch((e: { stdout: string }) => e);
    assert.match(out.stdout, /- camera +no camera section: a kiosk-only device/);
  });

  describe('installing', function () {
    it('the README lists the prerequisites, and npm shows what install does while it runs (finding: silent for minutes)', function () {
      const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
      assert.match(readme, /Node\.js ≥ 20\.19/);
      assert.match(readme, /C\/C\+\+ toolchain.*Python/s);
      assert.match(fs.readFileSync(path.join(ROOT, '.npmrc'), 'utf8'), /^foreground-scripts=true$/m);
    });

    it('the device install with --kiosk works on Node 20 as the README writes it (finding: stopped, Electron needs 22.12)', async function () {
      const script = path.join(ROOT, 'scripts', 'install-device.sh');
      const { stdout } = await run('bash', [script, '--dry-run', '--kiosk', '--config', path.join(ROOT, 'firmware-config', 'examples', 'raspberry-pi-5.yaml')]);
      assert.match(stdout, /kiosk.*npm ci/);
      assert.match(stdout, /authface-kiosk\.service/);
      assert.match(stdout, /AUTHFACE_KIOSK_SECRET_FILE=\/var\/lib\/authface\/kiosk\.secret/);
      const kiosk = JSON.parse(fs.readFileSync(path.join(ROOT, 'kiosk', 'package.json'), 'utf8')) as { engines: { node: string } };
      assert.equal(kiosk.engines.node, '>=20.19');
    });
  });
});
