import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { resultFinal } from '../src/api/schemas.ts';
import { Client, assertShape } from './support/client.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestService, startTestService } from './support/service.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('session lifecycle: expiry, single use, tenant isolation', function () {
  let svc: TestService;
  let img: Photos;

  before(async function () {
    img = await photos();
    svc = await startTestService({ AUTHFACE_SESSION_TTL_SECONDS: '1' });
  });
  after(() => svc.close());

  it('an unused link expires: /result says expired, the link answers 410, an audit event is written', async function () {
    const t = svc.tenant();
    const api = new Client(svc.url, t.apiKey);
    const { clientState, token } = await api.start('verify', { externalUserId: 'someone' });
    await sleep(1100);
    const result = assertShape(resultFinal, (await api.result(clientState)).body);
    assert.equal(result.status, 'expired');
    assert.equal(result.result, 'fail');
    assert.equal(result.reason, 'expired');
    const open = await api.capture(token).session();
    assert.equal(open.status, 410);
    assert.equal((open.body.error as { code: string }).code, 'capture_link_expired');
    const audit = svc.service.store.audit.list(t.id);
    assert.equal(audit[0].id, result.event_id);
    assert.equal(audit[0].reason, 'expired');
  });

  it('a link that expires during capture refuses frames and completion', async function () {
    const api = new Client(svc.url, svc.tenant().apiKey);
    const { clientState, token } = await api.start('identify');
    const capture = api.capture(token);
    assert.equal((await capture.session()).status, 200);
    await sleep(1100);
    assert.equal((await capture.frame(img.personB)).status, 410);
    assert.equal((await capture.complete()).status, 410);
    assert.equal((await api.result(clientState)).body.status, 'expired');
  });

  it('the periodic sweep expires open sessions nobody polls', async function () {
    const t = svc.tenant();
    const api = new Client(svc.url, t.apiKey);
    await api.start('identify');
    await api.start('identify');
    await sleep(1100);
    assert.equal(await svc.service.sessions.sweepExpired(), 2);
    const expired = svc.service.store.audit.list(t.id).filter((e) => e.reason === 'expired');
    assert.equal(expired.length, 2);
  });
});

describe('capture tokens', function () {
  let svc: TestService;
  let api: Client;
  let img: Photos;

  before(async function () {
    img = await photos();
    svc = await startTestService();
    api = new Client(svc.url, svc.tenant().apiKey);
  });
  after(() => svc.close());

  it('after the decision the token accepts nothing more (410)', async function () {
    const { token } = await api.start('identify');
    const capture = api.capture(token);
    await capture.session();
    await capture.frame(img.personB);
    assert.equal((await capture.complete()).status, 200);
    for (const reply of [await capture.session(), await capture.frame(img.personB), await capture.complete(), await capture.cancel()]) {
      assert.equal(reply.status, 410);
      assert.equal((reply.body.error as { code: string }).code, 'capture_link_used');
    }
  });

  it('an unknown or malformed token is 401, and no token at all too', async function () {
    for (const token of ['x'.repeat(43), 'short', crypto.randomBytes(32).toString('base64url')]) {
      const reply = await api.capture(token).session();
      assert.equal(reply.status, 401);
      assert.equal((reply.body.error as { code: string }).code, 'invalid_capture_token');
    }
    const res = await fetch(`${svc.url}/capture/v1/session`);
    assert.equal(res.status, 401);
  });

  it('an API key is not a capture token, and a capture token is not an API key', async function () {
    const { token } = await api.start('identify');
    assert.equal((await api.capture(api.apiKey).session()).status, 401);
    assert.equal((await new Client(svc.url, token).post('/biometry/v1/list-users', {})).status, 401);
  });

  it('tokens are stored only as hashes', async function () {
    const { token } = await api.start('identify');
    const dump = JSON.stringify(svc.service.store.db.prepare('SELECT * FROM sessions').all());
    assert.ok(!dump.includes(token));
    const rows = svc.service.store.db.prepare('SELECT token_hash FROM sessions').all() as { token_hash: Buffer }[];
    assert.ok(rows.every((r) => r.token_hash.length === 32 && !r.token_hash.toString('latin1').includes(token)));
  });

  it('the capture page is served with no-referrer and no-store so the token does not leak', async function () {
    const { biometryUrl } = await api.start('identify');
    const res = await fetch(biometryUrl.replace(/^http:\/\/localhost:\d+/, svc.url));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
    assert.equal(res.headers.get('cache-control'), 'no-store');
    assert.match(res.headers.get('content-security-policy') ?? '', /default-src 'none'/);
  });
});

describe('tenant isolation', function () {
  let svc: TestService;
  let img: Photos;
  let one: Client;
  let two: Client;

  before(async function () {
    img = await photos();
    svc = await startTestService();
    one = new Client(svc.url, svc.tenant().apiKey);
    two = new Client(svc.url, svc.tenant().apiKey);
    const enrolled = await one.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' });
    assert.equal(enrolled.result.status, 'success');
  });
  after(() => svc.close());

  it("a tenant cannot read, list, get or delete another tenant's sessions and users", async function () {
    const { clientState } = await one.start('identify');
    assert.equal((await two.result(clientState)).status, 404);
    assert.equal((await two.post('/biometry/v1/get-user', { external_user_id: 'alice' })).status, 404);
    assert.equal((await two.post('/biometry/v1/delete-user', { external_user_id: 'alice' })).status, 404);
    assert.equal(((await two.post('/biometry/v1/list-users', {})).body as { total: number }).total, 0);
    assert.equal((await one.post('/biometry/v1/get-user', { external_user_id: 'alice' })).status, 200);
  });

  it("a tenant never matches against another tenant's templates", async function () {
    const identify = await two.run('identify', thrice(img.personA[1]));
    assert.equal(identify.result.reason, 'not_identified');
    assert.equal(identify.result.score, null);
    const verify = await two.run('verify', thrice(img.personA[1]), { externalUserId: 'alice' });
    assert.equal(verify.result.reason, 'user_not_found');
    // the same face enrolls in the other tenant without a conflict
    const enroll = await two.run('enroll', thrice(img.personA[1]), { externalUserId: 'alice' });
    assert.equal(enroll.result.status, 'success');
  });

  it('client_state is unique per tenant, not across tenants', async function () {
    const { clientState } = await one.start('identify');
    const reply = await two.post('/biometry/v1/identify', { client_state: clientState, redirect_url: 'https://app.example.com/cb' });
    assert.equal(reply.status, 200);
  });
});
