import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MATCHERS, MOBILEFACENET, PRIMARY_MODEL } from '../src/biometrics/matchers/index.ts';
import { authface, run, serve, stop } from './support/cli.ts';
import { ROOT } from './support/datasets.ts';
import { type Photos, photos } from './support/photos.ts';

describe('the authface command', function () {
  let dataDir: string;
  let img: Photos;
  const env = () => ({ AUTHFACE_DATA_DIR: dataDir });

  before(async () => (img = await photos()));
  beforeEach(() => (dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-cli-'))));
  afterEach(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  it('serve: the first start creates a default tenant and prints its API key once; it works for curl', async function () {
    const first = await serve(env());
    // not on a terminal: the key is in a 0600 file of the data directory (see test/hardening/review-items)
    const key = /afk_\S+/.exec(fs.readFileSync(path.join(dataDir, 'first-start-api-key'), 'utf8'))?.[0];
    assert.ok(key, first.output());
    const res = await fetch(`${first.url}/biometry/v1/enroll`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ client_state: '3b1f7c52-0d3e-4a8e-9c1e-2f4b5a6c7d8e', redirect_url: 'http://localhost/done', external_user_id: 'u1' }),
    });
    assert.equal(res.status, 200);
    assert.equal(await stop(first.child), 0, 'a clean exit on SIGTERM');
    const second = await serve(env());
    assert.ok(!/First start/.test(second.output()), 'the tenant and key are made only on the first start');
    await stop(second.child);
  });

  it('tenant create prints {tenant_id, api_key}; key create/revoke manage keys', async function () {
    const { stdout } = await authface(['tenant', 'create', '--name', 'Shop', '--allowed-origin', 'https://shop.example.com/path', '--allowed-origin', 'http://localhost:3000', '--liveness', 'active'], env());
    const created = JSON.parse(stdout) as { tenant_id: string; api_key: string; key_id: string };
    assert.match(created.tenant_id, /^[0-9a-f-]{36}$/);
    assert.match(created.api_key, /^afk_[A-Za-z0-9_-]{43}$/);
    const extra = JSON.parse((await authface(['key', 'create', '--tenant', created.tenant_id], env())).stdout) as { api_key: string; key_id: string };
    assert.notEqual(extra.api_key, created.api_key);

    const svc = await serve(env());
    try {
      const call = (key: string) =>
        fetch(`${svc.url}/biometry/v1/identify`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: JSON.stringify({ client_state: crypto.randomUUID(), redirect_url: 'https://shop.example.com/back' }),
        });
      assert.equal((await call(created.api_key)).status, 200, 'the origin was stored without its path');
      assert.equal((await call(extra.api_key)).status, 200);
      const revoked = JSON.parse((await authface(['key', 'revoke', '--key-id', extra.key_id], env())).stdout) as { revoked: boolean };
      assert.equal(revoked.revoked, true);
      assert.equal((await call(extra.api_key)).status, 401);
      assert.equal((await call(created.api_key)).status, 200);
    } finally {
      await stop(svc.child);
    }
  });

  it('refuses bad arguments with a message and a non-zero exit', async function () {
    await assert.rejects(authface(['tenant', 'create', '--name', 'X', '--allowed-origin', 'not-an-origin'], env()), (e: { stderr: string; code: number }) => e.code !== 0 && /not an origin/.test(e.stderr));
    await assert.rejects(authface(['tenant', 'create', '--name', 'X', '--allowed-origin', 'https://a.example', '--liveness', 'sometimes'], env()), (e: { code: number }) => e.code !== 0);
    await assert.rejects(authface(['key', 'revoke', '--key-id', 'key_nope'], env()), (e: { stderr: string }) => /there is no database in/.test(e.stderr));
    await authface(['tenant', 'create', '--name', 'X', '--allowed-origin', 'https://a.example'], env());
    await assert.rejects(authface(['key', 'revoke', '--key-id', 'key_nope'], env()), (e: { stderr: string }) => /no active key/.test(e.stderr));
    await assert.rejects(authface(['config'], { PORT: 'x' }), (e: { stderr: string }) => /PORT/.test(e.stderr));
    await assert.rejects(authface(['tenant', 'create', '--name', 'X', '--allowed-origin', 'https://a.example', '--pad-threshold', '2'], env()), (e: { stderr: string }) => /a number from 0 to 1/.test(e.stderr));
  });

  it("tenant create and update set a tenant's anti-spoofing floor; 'default' takes it away", async function () {
    const { tenant_id } = JSON.parse((await authface(['tenant', 'create', '--name', 'Strict', '--allowed-origin', 'https://a.example', '--pad-threshold', '0.3'], env())).stdout) as { tenant_id: string };
    const show = async () => (JSON.parse((await authface(['tenant', 'show', '--tenant', tenant_id], env())).stdout) as { pad_threshold: number | null }).pad_threshold;
    assert.equal(await show(), 0.3);
    await authface(['tenant', 'update', '--tenant', tenant_id, '--pad-threshold', '0.5'], env());
    assert.equal(await show(), 0.5);
    await authface(['tenant', 'update', '--tenant', tenant_id, '--pad-threshold', 'default'], env());
    assert.equal(await show(), null);
  });

  it('config prints every option with its default', async function () {
    const { stdout } = await authface(['config'], env());
    assert.match(stdout, new RegExp(`\\| \`AUTHFACE_MATCH_THRESHOLD\` \\| \`${MOBILEFACENET.matchThreshold}\` \\|`), 'the new model\'s measured 1:1 threshold');
    assert.match(stdout, /\| `PORT` \| `8080` \|/);
  });

  it('eval pairs and eval identify print the documented figures', async function () {
    const dir = path.join(dataDir, 'images');
    for (const name of ['a', 'b', 'c']) fs.mkdirSync(path.join(dir, name), { recursive: true });
    img.personA.forEach((bytes, i) => fs.writeFileSync(path.join(dir, 'a', `${i + 1}.jpg`), bytes));
    fs.writeFileSync(path.join(dir, 'b', '1.jpg'), img.personB);
    fs.writeFileSync(path.join(dir, 'c', '1.jpg'), img.personC);
    const csv = path.join(dataDir, 'pairs.csv');
    fs.writeFileSync(
      csv,
      ['file_x,file_y,Decision,fold', 'a/1.jpg,a/2.jpg,Yes,1', 'a/1.jpg,b/1.jpg,No,1', 'a/2.jpg,a/3.jpg,Yes,2', 'a/3.jpg,c/1.jpg,No,2', 'nested/path/1.jpg,b/1.jpg,No,2'].join('\n').replace('nested/path/1.jpg', 'x/y/1.jpg'),
    );
    // "x/y/1.jpg" does not exist under the images directory: the runner falls back to the file name
    fs.writeFileSync(path.join(dir, '1.jpg'), img.personC);
    const byModel = JSON.parse((await authface(['eval', 'pairs', '--csv', csv, '--images', dir, '--workers', '1'], env())).stdout) as Record<string, Record<string, unknown>>;
    assert.deepEqual(Object.keys(byModel), MATCHERS.map((m) => m.id), 'every model, newest first');
    const figures = byModel[PRIMARY_MODEL];
    for (const key of ['auc', 'eer', 'tar_at_far_0', 'tar_at_far_0.01', 'tar_at_far_0.001', 'accuracy_kfold', 'threshold', 'pairs', 'failed_to_detect', 'ms_per_image']) {
      assert.ok(key in figures, `${key} in ${JSON.stringify(figures)}`);
    }
    assert.equal(figures.pairs, 5);
    assert.equal(figures.failed_to_detect, 0);
    assert.equal(figures.auc, 1);
    const ident = JSON.parse((await authface(['eval', 'identify', '--gallery', dir, '--workers', '1', '--model', PRIMARY_MODEL], env())).stdout)[PRIMARY_MODEL] as Record<string, unknown>;
    assert.equal(ident.people, 3);
    assert.equal(ident.probes, 2);
    assert.equal(ident.rank1, 1);
    assert.equal(ident.false_identifications, 0);
    assert.equal(ident.fpir, null, 'no strangers, no FPIR');
    // b as a stranger to a gallery of a and c: a non-mated search, and FPIR at the rule for 2 people
    const strangers = path.join(dataDir, 'strangers');
    fs.mkdirSync(strangers);
    fs.writeFileSync(path.join(strangers, 'b.jpg'), img.personB);
    fs.rmSync(path.join(dir, 'b'), { recursive: true });
    const withStrangers = JSON.parse((await authface(['eval', 'identify', '--gallery', dir, '--strangers', strangers, '--workers', '1', '--model', PRIMARY_MODEL], env())).stdout)[PRIMARY_MODEL] as Record<string, unknown>;
    assert.deepEqual([withStrangers.enrolled, withStrangers.strangers, withStrangers.fpir, withStrangers.fnir], [2, 1, 0, 0]);
    assert.ok((withStrangers.threshold as number) >= MOBILEFACENET.matchThreshold, 'the identify threshold for 2 people');
  });

  it('bin/authface.js runs the built CLI', async function () {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'cli', 'main.js'))) this.skip();
    const { stdout } = await run(process.execPath, [path.join(ROOT, 'bin', 'authface.js'), '--version'], { cwd: ROOT });
    assert.equal(stdout.trim(), JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version);
  });
});
