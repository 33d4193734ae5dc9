import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { authface, run, serve, stop } from '../support/cli.ts';
import { Client } from '../support/client.ts';
import { ROOT } from '../support/datasets.ts';
import { type Photos, photos } from '../support/photos.ts';
import { type TestService, startTestService } from '../support/service.ts';

/** This machine's first non-loopback IPv4 address, or undefined. */
const lanAddress = () => Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal)?.address;

/** Issue 7, section 6: small items from the review. */
describe('small items from the review', function () {
  let img: Photos;
  before(async () => (img = await photos()));

  describe('external_user_id that is not well-formed text', function () {
    let svc: TestService;
    let api: Client;
    before(async function () {
      svc = await startTestService();
      api = new Client(svc.url, svc.tenant().apiKey);
    });
    after(() => svc?.close());

    /** A raw JSON body, so that \ud800 reaches the service exactly as an attacker writes it. */
    const raw = (route: string, json: string) =>
      fetch(`${svc.url}/biometry/v1/${route}`, { method: 'POST', headers: { authorization: `Bearer ${api.apiKey}`, 'content-type': 'application/json' }, body: json });

    it('a lone surrogate is refused with a clear 400, and nothing is stored (finding: stored mangled, then neither get nor delete)', async function () {
      const res = await raw('enroll', `{"client_state":"${crypto.randomUUID()}","redirect_url":"https://app.example.com/cb","external_user_id":"al\\ud800ice"}`);
      assert.equal(res.status, 400);
      assert.match(((await res.json()) as { error: { message: string } }).error.message, /external_user_id is not well-formed text/);
      assert.equal((svc.service.store.db.prepare('SELECT COUNT(*) AS n FROM sessions').get() as { n: number }).n, 0);
    });

    it('invisible format characters are refused', async function () {
      for (const id of ['\u200balice', 'ali\u200dce', 'alice\u2066', '\ufeffalice']) {
        const res = await api.post('/biometry/v1/get-user', { external_user_id: id });
        assert.equal(res.status, 400, JSON.stringify(id));
        assert.match((res.body.error as { message: string }).message, /invisible/);
      }
    });

    it('ids are normalised to NFC: an id written decomposed is the same user', async function () {
      const composed = 'Ren\u00e9e';
      const decomposed = 'Rene\u0301e';
      assert.equal((await api.run('enroll', [img.personB, img.personB, img.personB], { externalUserId: decomposed })).result.status, 'success');
      const user = await api.post('/biometry/v1/get-user', { external_user_id: composed });
      assert.equal(user.status, 200);
      assert.equal((user.body.user as { external_user_id: string }).external_user_id, composed);
      assert.equal((await api.post('/biometry/v1/delete-user', { external_user_id: decomposed })).status, 200);
    });
  });

  describe('/metrics', function () {
    it('does not tell the network how many people are enrolled (finding: anyone could read it)', async function () {
      const lan = lanAddress();
      if (!lan) this.skip();
      const svc = await startTestService({ HOST: '0.0.0.0' });
      try {
        const port = new URL(svc.url).port;
        const fromLan = await fetch(`http://${lan}:${port}/metrics`);
        assert.equal(fromLan.status, 403);
        assert.ok(!(await fromLan.text()).includes('authface_templates'));
        const proxied = await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { 'x-forwarded-for': '192.0.2.1' } });
        assert.equal(proxied.status, 403, 'relayed by a proxy on the box');
        assert.equal((await fetch(`http://127.0.0.1:${port}/metrics`)).status, 200, 'the device itself may read it');
      } finally {
        await svc.close();
      }
    });

    it('with AUTHFACE_METRICS_TOKEN, a scraper holding the token may read it from anywhere, and nobody else', async function () {
      const lan = lanAddress();
      if (!lan) this.skip();
      const token = 'metrics-token-for-tests-0123456789';
      const svc = await startTestService({ HOST: '0.0.0.0', AUTHFACE_METRICS_TOKEN: token });
      try {
        const port = new URL(svc.url).port;
        assert.equal((await fetch(`http://${lan}:${port}/metrics`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
        assert.equal((await fetch(`http://${lan}:${port}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
        assert.equal((await fetch(`http://127.0.0.1:${port}/metrics`)).status, 401, 'with a token set, loopback needs it too');
      } finally {
        await svc.close();
      }
    });
  });

  describe('the first-start API key', function () {
    let dataDir: string;
    beforeEach(() => (dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-first-'))));
    afterEach(() => fs.rmSync(dataDir, { recursive: true, force: true }));

    it('is not printed where systemd or docker would keep it: it goes to a 0600 file, and the output says where', async function () {
      const first = await serve({ AUTHFACE_DATA_DIR: dataDir });
      await stop(first.child);
      assert.ok(!/afk_/.test(first.output()), 'the key is not in the output');
      const file = path.join(dataDir, 'first-start-api-key');
      assert.ok(first.output().includes(file), first.output());
      assert.equal((fs.statSync(file).mode & 0o777).toString(8), '600');
      const key = /afk_[A-Za-z0-9_-]{43}/.exec(fs.readFileSync(file, 'utf8'))?.[0];
      assert.ok(key);
    });

    it('is shown on a terminal (and then not written to a file)', async function () {
      const cmd = `${process.execPath} --import tsx ${path.join(ROOT, 'src/cli/main.ts')} serve`;
      const { stdout } = await run('script', ['-qec', `timeout -s INT 20 ${cmd}`, '/dev/null'], {
        cwd: ROOT,
        env: { ...process.env, AUTHFACE_DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'info' },
      }).catch((e: { stdout: string }) => e);
      assert.match(stdout, /API key \(shown once, store it now\): afk_[A-Za-z0-9_-]{43}/);
      assert.match(stdout, /^\d\d:\d\d:\d\d INFO {2}listening {2}url=http/m, 'on a terminal the logs are readable lines, not JSON');
      assert.equal(fs.existsSync(path.join(dataDir, 'first-start-api-key')), false);
    });
  });

  it('the Jetson example sends its broker password over TLS (mqtts://)', function () {
    const example = parseYaml(fs.readFileSync(path.join(ROOT, 'firmware-config', 'examples', 'jetson-orin-nano.yaml'), 'utf8')) as { mqtt: { url: string; ca_file?: string } };
    assert.match(example.mqtt.url, /^mqtts:\/\//);
    assert.ok(example.mqtt.ca_file);
  });

  it('config refuses a malformed AUTHFACE_MASTER_KEY, naming it', async function () {
    await assert.rejects(authface(['config'], { AUTHFACE_MASTER_KEY: 'not-a-key' }), (e: { stderr: string; code: number }) => e.code === 2 && /AUTHFACE_MASTER_KEY: .*64 hex or 44 base64/.test(e.stderr));
  });
});
