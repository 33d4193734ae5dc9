import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { t } from '../../src/console/pages.ts';
import { assertOneLine, authface, refusal, run, serveHub, stop } from '../support/cli.ts';
import { ROOT } from '../support/datasets.ts';
import { startTestDevice } from '../support/device.ts';
import { freePort } from '../support/mosquitto.ts';
import { testBroker } from '../support/mqtt.ts';
import { type TestDatabase, createTestDatabase } from '../support/postgres.ts';
import { startTestService } from '../support/service.ts';

const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
const fleetBlock = readme.slice(readme.indexOf('## A fleet: one hub, many doors'), readme.indexOf('`authface hub serve` does not start without'));

/** Issue 20, "The operator's first hour": each trap found by a new user, named after its number there. */
describe("issue 20: the operator's first hour", function () {
  this.timeout(180_000);
  let dataDir: string;
  beforeEach(() => (dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-op-'))));
  afterEach(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  it("1. the README's fleet quick start adds a passive tenant, so its photo enrols (the kiosk following the hub: fleet-join.test.ts)", function () {
    assert.match(fleetBlock, /authface hub tenant add --name acme --allowed-origin \S+ --liveness passive/);
  });

  describe('2. hub device add prints the URL the running hub serves on', function () {
    let db: TestDatabase;
    let hub: (ChildProcess & { url: string }) | undefined;
    before(async function () {
      db = await createTestDatabase();
    });
    after(async function () {
      if (hub) await stop(hub);
      await db?.drop();
    });

    it('on another port than 8080, with no PUBLIC_URL given to the command', async function () {
      const hubEnv = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex') };
      const cli = (args: string[]) => authface(['hub', ...args, '--database-url', db.url], hubEnv);
      const tenantId = (JSON.parse((await cli(['tenant', 'add', '--name', 'acme'])).stdout) as { tenant_id: string }).tenant_id;
      hub = await serveHub({ databaseUrl: db.url, brokerUrl: (await testBroker()).url, prefix: `op-${process.pid}` }, hubEnv);
      assert.doesNotMatch(hub.url, /:8080$/);
      const added = JSON.parse((await cli(['device', 'add', '--tenant', tenantId, '--name', 'front'])).stdout) as { on_the_device: string };
      assert.match(added.on_the_device, new RegExp(`^authface join --hub ${hub.url.replace(/[.]/g, '\\.')} --code `));
    });
  });

  describe('3. start-up mistakes are one line saying what to fix', function () {
    it('HOST=127.0.0.l (a typo)', async function () {
      assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: dataDir, HOST: '127.0.0.l' }), /HOST=127\.0\.0\.l is neither an address nor a name .*set HOST to 0\.0\.0\.0/);
    });
    it('HOST an address that is not on this machine', async function () {
      assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: dataDir, HOST: '192.0.2.1' }), /HOST=192\.0\.2\.1 is not an address of this machine/);
    });
    it('AUTHFACE_DATA_DIR pointing at a file', async function () {
      const file = path.join(dataDir, 'a-file');
      fs.writeFileSync(file, '');
      assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: file }), /a-file cannot be made a directory: a file is in the way\. Point AUTHFACE_DATA_DIR at a directory/);
    });
    it('the port in use: its one line comes without a fatal engine line before it', async function () {
      const port = await freePort();
      const taken = net.createServer().listen(port, '127.0.0.1');
      try {
        assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: dataDir, PORT: String(port) }), /is in use by another program/);
      } finally {
        taken.close();
      }
    });
  });

  it('4. PUBLIC_URL without a scheme is refused (biometry_url would be unusable)', async function () {
    assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: dataDir, PUBLIC_URL: 'localhost:8095' }), /PUBLIC_URL: must be an http:\/\/ or https:\/\/ address/);
    assertOneLine(await refusal(['serve'], { AUTHFACE_DATA_DIR: dataDir, PUBLIC_URL: 'https://doors.example.com/?x=1' }), /PUBLIC_URL: must be a base address/);
  });

  describe('5 and 6. a command on the PATH that is this project, and servers that stop on a signal', function () {
    const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-prefix-'));
    const bin = path.join(prefix, 'bin', 'authface');
    before(async function () {
      if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) this.skip(); // not built by npm install
      // `npm link` as the README says, into a prefix of its own (the machine's global one stays untouched)
      await run('npm', ['link', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: ROOT, env: { ...process.env, npm_config_prefix: prefix } });
    });
    after(() => fs.rmSync(prefix, { recursive: true, force: true }));

    it('5. `npm link` puts authface on the PATH, and it runs this checkout from any directory; the README never says `npx authface` but to warn', async function () {
      assert.equal(fs.realpathSync(bin), path.join(ROOT, 'bin', 'authface.js'));
      const version = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version as string;
      assert.equal((await run(bin, ['--version'], { cwd: os.tmpdir() })).stdout.trim(), version);
      for (const doc of ['README.md', 'firmware-config/README.md']) {
        const mentions = fs.readFileSync(path.join(ROOT, doc), 'utf8').split('\n').filter((l) => /npx authface/.test(l));
        assert.ok(mentions.every((l) => /Do not use|outside this directory/.test(l)), `${doc}: ${mentions.join(' | ')}`);
      }
      assert.match(readme, /`npm link`/);
    });

    const served = async (command: string, args: string[], port: number) => {
      const child = spawn(command, args, { cwd: ROOT, env: { ...process.env, AUTHFACE_DATA_DIR: dataDir, PORT: String(port), LOG_LEVEL: 'warn' }, stdio: 'ignore' });
      for (let i = 0; i < 240 && !(await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false)); i++) await new Promise((r) => setTimeout(r, 250));
      return child;
    };
    const portClosed = async (port: number) => {
      for (let i = 0; i < 40; i++) {
        if (!(await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false))) return true;
        await new Promise((r) => setTimeout(r, 250));
      }
      return false;
    };

    it('6. `authface serve &` stops on SIGTERM to its process', async function () {
      const port = await freePort();
      const child = await served(bin, ['serve'], port);
      child.kill('SIGTERM');
      assert.ok(await portClosed(port), 'the port is free again');
    });

    it('6. `npm start` stops when npm is killed (npm does not pass SIGTERM on: the server notices it is orphaned)', async function () {
      const port = await freePort();
      const npm = await served('npm', ['start'], port);
      npm.kill('SIGTERM');
      assert.ok(await portClosed(port), 'the server stopped with npm');
    });
  });

  it('7. GET /kiosk in a plain browser: the 403 names the header and the secret file', async function () {
    const device = await startTestDevice({ device_id: 'op-kiosk', doors: [{ id: 'front', relay: { driver: 'simulated' } }], mqtt: { embedded: { host: '127.0.0.1', port: 0 } } });
    try {
      const res = await fetch(`${device.svc.url}/kiosk?door=front`);
      assert.equal(res.status, 403);
      const { error } = (await res.json()) as { error: { code: string; message: string } };
      assert.equal(error.code, 'kiosk_only');
      assert.ok(error.message.includes('x-authface-kiosk'), error.message);
      assert.ok(error.message.includes(path.join(device.svc.dataDir, 'kiosk.secret')), error.message);
    } finally {
      await device.close();
    }
  });

  // 8 and 9 (a joined door has no local default tenant; join's next step names the data
  // directory) are in fleet-join.test.ts, with a real hub and a real join

  it("10. the README's fleet walk-through keeps door data outside the checkout, and git ignores a data directory's secrets wherever they are", async function () {
    assert.doesNotMatch(fleetBlock, /AUTHFACE_DATA_DIR=(front|back)\b/);
    assert.match(fleetBlock, /DOOR=~\/authface-doors\/front/);
    const secrets = ['front/device.key', 'front/device-signing.key', 'front/tenant-key.json', 'front/broker-password', 'front/kiosk.secret', 'front/master.key', 'front/authface.db', 'front/authface.db-wal', 'front/first-start-api-key', 'front/device.yaml'];
    const ignored = (await run('git', ['check-ignore', ...secrets], { cwd: ROOT })).stdout.trim().split('\n');
    assert.deepEqual(ignored, secrets);
  });

  it('11. `authface tenant list` loads no engine, HTTP server, MQTT or PostgreSQL (its time: npm run bench -- --only cli)', async function () {
    const trace = path.join(dataDir, 'modules.txt');
    await authface(['tenant', 'create', '--name', 'shop', '--allowed-origin', 'https://shop.example.com'], { AUTHFACE_DATA_DIR: dataDir });
    await authface(['tenant', 'list'], {
      AUTHFACE_DATA_DIR: dataDir,
      AUTHFACE_TEST_MODULES_FILE: trace,
      NODE_OPTIONS: `--import=${pathToFileURL(path.join(ROOT, 'test', 'support', 'loaded-modules.mjs')).href}`,
    });
    const loaded = fs.readFileSync(trace, 'utf8');
    assert.match(loaded, /src\/store\/index\.ts/, 'the trace saw the store it did load');
    for (const heavy of ['/node_modules/pg/', '/node_modules/mqtt/', '/node_modules/koa/', '/node_modules/onnxruntime-node/', '/node_modules/@vladmandic/', '/src/biometrics/engine.ts', '/src/service.ts']) {
      assert.ok(!loaded.includes(heavy), `tenant list loaded ${heavy}`);
    }
  });

  describe('12. smaller', function () {
    it('backup leaves no -wal or -shm beside its output, and backup and restore say which data directory they use', async function () {
      const env = { AUTHFACE_DATA_DIR: dataDir };
      await authface(['tenant', 'create', '--name', 'shop', '--allowed-origin', 'https://shop.example.com'], env);
      const out = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-backup-'));
      try {
        const backup = await authface(['backup', '--out', path.join(out, 'copy.db')], env);
        assert.equal((JSON.parse(backup.stdout) as { data_dir: string }).data_dir, dataDir);
        assert.match(backup.stderr, new RegExp(`data directory ${dataDir.replace(/[/.]/g, '\\$&')}`));
        assert.deepEqual(fs.readdirSync(out), ['copy.db']);
        const restored = await authface(['restore', path.join(out, 'copy.db')], env);
        assert.equal((JSON.parse(restored.stdout) as { data_dir: string; tenants: number }).data_dir, dataDir);
        assert.deepEqual(fs.readdirSync(out), ['copy.db'], 'nor after the restore read it');
      } finally {
        fs.rmSync(out, { recursive: true, force: true });
      }
    });

    it('a 401 is logged with its route, not the router prefix', async function () {
      const svc = await startTestService();
      try {
        await fetch(`${svc.url}/biometry/v1/enroll`, { method: 'POST', body: '{}' });
        await fetch(`${svc.url}/device/v1/set-pin`, { method: 'POST', body: '{}' });
        await new Promise((r) => setTimeout(r, 100));
        const routes = svc.logs().split('\n').filter((l) => l.includes('"msg":"request"')).map((l) => (JSON.parse(l) as { route: string; status: number }));
        assert.deepEqual(routes.map((r) => [r.route, r.status]), [['/biometry/v1/enroll', 401], ['/device/v1/set-pin', 401]]);
      } finally {
        await svc.close();
      }
    });

    it('the console says "1 change"', function () {
      assert.deepEqual([t('fleet.changes', { n: 1 }), t('fleet.changes', { n: 2 })], ['1 change', '2 changes']);
    });

    it("the README's stale line is gone, and its first-start sample is what a first start prints", async function () {
      assert.doesNotMatch(readme, /Not done yet: tenant and group changes through the log/);
      const port = await freePort();
      const child = spawn(process.execPath, [path.join(ROOT, 'node_modules', 'tsx', 'dist', 'cli.mjs'), path.join(ROOT, 'src', 'cli', 'main.ts'), 'serve'], { env: { ...process.env, AUTHFACE_DATA_DIR: dataDir, PORT: String(port), LOG_LEVEL: 'warn' } });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      try {
        for (let i = 0; i < 240 && !/Its API key is in/.test(out); i++) await new Promise((r) => setTimeout(r, 250));
        const printed = out.split('\n').filter((l) => /^(First start|passive liveness)/.test(l)).map((l) => l.replace(/\([0-9a-f-]{36}\)/, '(…)'));
        assert.equal(printed.length, 2, out);
        for (const line of printed) assert.ok(readme.includes(line), `README lacks: ${line}`);
      } finally {
        await stop(child);
      }
    });
  });
});
